"""scratch_layers vs Keras: Embedding(mask_zero) + SimpleRNN / LSTM / GRU /
Bidirectional, with every masking pattern (pre/post/interior padding, all-padding rows)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import check_model, keras  # noqa: E402

pytestmark = pytest.mark.scratch

V, T, D = 30, 9, 5


def id_batch(pattern, n=None, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, size=(8, T))
    if pattern == "mixed":
        ids[1, 6:] = 0          # post-padding
        ids[2, :4] = 0          # pre-padding
        ids[3, [2, 3, 6]] = 0   # interior zeros
        ids[4, :] = 0           # all padding
        ids[5, 0] = 0           # first step only
        ids[6, -1] = 0          # last step only
    elif pattern == "post-uniform":
        ids[:, 5:] = 0          # whole trailing steps masked for every row
    elif pattern == "pre-uniform":
        ids[:, :3] = 0
    elif pattern == "all-padding":
        ids[:] = 0
    elif pattern == "none":
        pass
    return ids.astype("int32")


PATTERNS = ["mixed", "post-uniform", "pre-uniform", "all-padding", "none"]


def rnn_layer(k, cell, **kw):
    if cell == "GRU-reset_before":
        return k.layers.GRU(reset_after=False, **kw)
    return getattr(k.layers, cell)(**kw)


def build(k, layers, mask_zero=True):
    return k.Sequential([k.Input((T,), dtype="int32"), k.layers.Embedding(V, D, mask_zero=mask_zero)]
                        + layers)


CELLS = ["SimpleRNN", "LSTM", "GRU", "GRU-reset_before"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("cell", CELLS)
def test_single_rnn_last_output(cell, pattern, tmp_path, record_property):
    k = keras()
    m = build(k, [rnn_layer(k, cell, units=4), k.layers.Dense(3, activation="softmax")])
    check_model(m, id_batch(pattern), tmp_path, record_property, batch_sizes=(None, 3))


VARIANTS = {
    "return_sequences": dict(return_sequences=True),
    "go_backwards": dict(go_backwards=True),
    "go_backwards-seq": dict(go_backwards=True, return_sequences=True),
    "no-bias": dict(use_bias=False),
    "relu-hardsigmoid": dict(activation="relu", recurrent_activation="hard_sigmoid"),
    "zero_output_for_mask-seq": dict(return_sequences=True, zero_output_for_mask=True),
    "zero_output_for_mask-last": dict(zero_output_for_mask=True),
    "unroll": dict(unroll=True, return_sequences=True),
}


@pytest.mark.parametrize("rnn_variant", list(VARIANTS))
@pytest.mark.parametrize("cell", CELLS)
def test_rnn_options(cell, rnn_variant, tmp_path, record_property):
    k = keras()
    kw = dict(VARIANTS[rnn_variant])
    if cell == "SimpleRNN":
        kw.pop("recurrent_activation", None)
    m = build(k, [rnn_layer(k, cell, units=4, **kw)])
    check_model(m, id_batch("mixed"), tmp_path, record_property)


@pytest.mark.parametrize("cell", CELLS)
def test_stacked_rnn(cell, tmp_path, record_property):
    k = keras()
    m = build(k, [rnn_layer(k, cell, units=4, return_sequences=True),
                  rnn_layer(k, cell, units=3, return_sequences=True),
                  rnn_layer(k, cell, units=5), k.layers.Dropout(0.5),
                  k.layers.Dense(3, activation="softmax")])
    check_model(m, id_batch("mixed"), tmp_path, record_property)


@pytest.mark.parametrize("merge_mode", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("return_sequences", [False, True], ids=["last", "seq"])
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional(cell, merge_mode, return_sequences, tmp_path, record_property):
    k = keras()
    m = build(k, [k.layers.Bidirectional(rnn_layer(k, cell, units=4, return_sequences=return_sequences),
                                         merge_mode=merge_mode)])
    check_model(m, id_batch("mixed"), tmp_path, record_property)


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("cell", ["SimpleRNN", "LSTM"])
def test_stacked_bidirectional_study_model(cell, pattern, tmp_path, record_property):
    """The NusaX study architecture (ids version): Emb(mask_zero) -> BiRNN(seq) -> BiRNN -> Dense."""
    k = keras()
    m = build(k, [k.layers.Bidirectional(rnn_layer(k, cell, units=4, return_sequences=True)),
                  k.layers.Bidirectional(rnn_layer(k, cell, units=3)),
                  k.layers.Dropout(0.3), k.layers.Dense(3, activation="softmax")])
    check_model(m, id_batch(pattern), tmp_path, record_property)


def test_no_mask_zero(tmp_path, record_property):
    k = keras()
    m = build(k, [k.layers.Bidirectional(k.layers.LSTM(4, return_sequences=True)), k.layers.GRU(3)],
              mask_zero=False)
    check_model(m, id_batch("mixed"), tmp_path, record_property)


def test_masked_global_average_pooling1d(tmp_path, record_property):
    k = keras()
    m = build(k, [k.layers.LSTM(4, return_sequences=True), k.layers.GlobalAveragePooling1D(),
                  k.layers.Dense(2)])
    x = id_batch("mixed")
    x = x[np.any(x != 0, axis=1)]  # all-padding row would be 0/0 in Keras too
    check_model(m, x, tmp_path, record_property)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_bilstm_large_batch_and_h5(fmt, tmp_path, record_property):
    k = keras()
    m = build(k, [k.layers.Bidirectional(k.layers.LSTM(8, return_sequences=True)),
                  k.layers.Bidirectional(k.layers.GRU(6)), k.layers.Dense(3, activation="softmax")])
    rng = np.random.default_rng(2)
    x = rng.integers(0, V, size=(300, T)).astype("int32")
    lengths = rng.integers(0, T + 1, size=300)
    x[np.arange(T)[None, :] >= lengths[:, None]] = 0
    check_model(m, x, tmp_path, record_property, fmt=fmt, batch_sizes=(None, 64))


def test_float_ids_that_are_integral_are_accepted(tmp_path, record_property):
    k = keras()
    m = build(k, [k.layers.LSTM(3)])
    x = id_batch("mixed")
    sm, _ = check_model(m, x, tmp_path, record_property)
    np.testing.assert_array_equal(sm.predict(x.astype(np.float64)), sm.predict(x))


@pytest.mark.parametrize("name,args", [("Dropout", (0.5,)), ("SpatialDropout1D", (0.5,)),
                                       ("GaussianNoise", (0.3,)), ("GaussianDropout", (0.3,)),
                                       ("ActivityRegularization", ()), ("LayerNormalization", ()),
                                       ("Dense", (4,))],
                         ids=["Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout",
                              "ActivityRegularization", "LayerNormalization", "Dense"])
def test_mask_propagates_through(name, args, tmp_path, record_property):
    """Keras passes the Embedding mask through mask-supporting layers to the RNN."""
    k = keras()
    m = build(k, [getattr(k.layers, name)(*args), k.layers.LSTM(3), k.layers.Dense(2)])
    check_model(m, id_batch("mixed"), tmp_path, record_property)


def test_masking_layer(tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((T, 3)), k.layers.Masking(mask_value=0.0),
                      k.layers.Bidirectional(k.layers.GRU(4, return_sequences=True)), k.layers.SimpleRNN(3)])
    x = np.random.default_rng(5).normal(size=(6, T, 3)).astype("float32")
    x[1, 5:] = 0
    x[2, :3] = 0
    x[3] = 0
    check_model(m, x, tmp_path, record_property)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_bidirectional_custom_backward_layer(fmt, tmp_path, record_property):
    k = keras()
    fwd = k.layers.LSTM(4, return_sequences=True)
    bwd = k.layers.GRU(4, return_sequences=True, go_backwards=True, use_bias=False)
    m = build(k, [k.layers.Bidirectional(fwd, backward_layer=bwd), k.layers.SimpleRNN(2)])
    check_model(m, id_batch("mixed"), tmp_path, record_property, fmt=fmt)


@pytest.mark.parametrize("cell", CELLS)
def test_embedding_folding_matches_layer_by_layer(cell, tmp_path, record_property):
    """predict() folds Embedding into the RNN input projection; intermediate_outputs()
    runs layer by layer. Both must agree (and match Keras)."""
    k = keras()
    m = build(k, [k.layers.Bidirectional(rnn_layer(k, cell, units=4, return_sequences=True)),
                  rnn_layer(k, cell, units=3), k.layers.Dense(2)])
    x = id_batch("mixed")
    sm, _ = check_model(m, x, tmp_path, record_property)
    inter = sm.intermediate_outputs(x)
    np.testing.assert_allclose(list(inter.values())[-1], sm.predict(x), rtol=0, atol=1e-12)
