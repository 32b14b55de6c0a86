"""scratch_layers backward pass: loss and gradients against tf.GradientTape on the
float64 twin (atol 1e-9, rtol 1e-7) and on the float32 Keras model (1e-5), for every
layer with a backward, random non-default weights and odd shapes; plus central
finite differences of scratch's own loss as an independent reference."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import compare_gradients, finite_difference_check  # noqa: E402
from keras_factories import keras, randomize_weights, save_load, tiny_text_model  # noqa: E402

import scratch_layers  # noqa: E402

pytestmark = pytest.mark.scratch

RNG = np.random.default_rng(0)
N = 5


def labels(n=N, classes=3, seed=0):
    return np.random.default_rng(seed).integers(0, classes, n)


def images(shape, seed=0):
    return np.random.default_rng(seed).normal(0.3, 1.0, (N,) + shape).astype(np.float32)


def run_case(model, x, tmp_path, record_property, training=False, seed=0, y=None):
    randomize_weights(model, seed)
    sm, _ = save_load(model, tmp_path)
    y = labels(len(x), model.output_shape[-1]) if y is None else y
    d64, d32 = compare_gradients(model, sm, x, y, training=training)
    record_property("max_grad_diff_float64_twin", d64)
    record_property("max_grad_diff_float32", d32)
    return sm


def head(k, classes=3):
    return [k.layers.Flatten(), k.layers.Dense(classes, activation="softmax")]


# ----------------------------------------------------------------------------- Dense

DENSE_ACTIVATIONS = ["linear", "relu", "relu6", "leaky_relu", "sigmoid", "tanh", "elu", "selu",
                     "softplus", "softsign", "silu", "exponential", "hard_sigmoid"]


@pytest.mark.parametrize("act", DENSE_ACTIVATIONS)
def test_dense_activations(act, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((7,)), k.layers.Dense(6, activation=act),
                      k.layers.Dense(4, use_bias=False), k.layers.Dense(3, activation="softmax")])
    run_case(m, images((7,)), tmp_path, record_property)


def test_dense_gelu(tmp_path, record_property):
    """gelu is checked against central differences and Keras float32 only: TensorFlow's
    float64 erfc is off by ~5e-8 relative near x = -sqrt(2) (math.erfc and scratch agree),
    so the float64 twin itself misses 1e-9 there."""
    k = keras()
    m = k.Sequential([k.Input((7,)), k.layers.Dense(6, activation="gelu"),
                      k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 0)
    sm, _ = save_load(m, tmp_path)
    x, y = images((7,)), labels()
    from backward_helpers import keras_loss_and_grads
    _, grads = sm.loss_and_gradients(x, y)
    _, kgrads = keras_loss_and_grads(m, x, y)
    assert all(np.allclose(g, kg, atol=1e-5, rtol=1e-5) for g, kg in zip(grads, kgrads))
    assert finite_difference_check(sm, x, y) < 1e-6


@pytest.mark.parametrize("layer", ["ReLU", "ReLU-options", "LeakyReLU", "ELU", "Activation-tanh"])
def test_activation_layers(layer, tmp_path, record_property):
    k = keras()
    act = {"ReLU": k.layers.ReLU(), "ReLU-options": k.layers.ReLU(max_value=0.8, negative_slope=0.1, threshold=0.05),
           "LeakyReLU": k.layers.LeakyReLU(negative_slope=0.3), "ELU": k.layers.ELU(alpha=0.7),
           "Activation-tanh": k.layers.Activation("tanh")}[layer]
    m = k.Sequential([k.Input((6,)), k.layers.Dense(8), act, k.layers.Dense(3, activation="softmax")])
    run_case(m, images((6,)), tmp_path, record_property)


@pytest.mark.parametrize("out", ["softmax-layer", "activation-softmax", "sigmoid", "softplus"])
def test_output_kinds(out, tmp_path, record_property):
    """Softmax and sigmoid outputs: Keras computes the loss from their logits (a sigmoid's
    pre-activation is used as softmax logits); other outputs are clipped probabilities."""
    k = keras()
    tail = {"softmax-layer": [k.layers.Dense(4), k.layers.Softmax()],
            "activation-softmax": [k.layers.Dense(4), k.layers.Activation("softmax")],
            "sigmoid": [k.layers.Dense(4, activation="sigmoid")],
            "softplus": [k.layers.Dense(4, activation="softplus")]}[out]
    m = k.Sequential([k.Input((5,)), k.layers.Dense(6, activation="tanh")] + tail)
    run_case(m, images((5,)), tmp_path, record_property, y=labels(N, 4))


def test_confident_softmax_uses_logits(tmp_path, record_property):
    """p_y > 1 - 1e-7: clipping would zero the gradient; Keras (and scratch) use the logits."""
    k = keras()
    m = k.Sequential([k.Input((4,)), k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 0)
    kernel, bias = m.get_weights()
    m.set_weights([kernel * 400, bias])
    sm, _ = save_load(m, tmp_path)
    x = images((4,))
    y = np.argmax(m.predict(x, verbose=0), axis=1)
    assert (m.predict(x, verbose=0).max(axis=1) > 1 - 1e-7).any()
    compare_gradients(m, sm, x, y)


# ----------------------------------------------------------------------------- convolution

CONV_CASES = {
    "3x3-valid": dict(kernel_size=3),
    "3x3-same-stride2": dict(kernel_size=3, padding="same", strides=2),
    "2x4-same-stride(2,3)": dict(kernel_size=(2, 4), padding="same", strides=(2, 3)),
    "3x3-valid-dilation2": dict(kernel_size=3, dilation_rate=2),
    "3x2-same-dilation(2,1)-relu": dict(kernel_size=(3, 2), padding="same", dilation_rate=(2, 1),
                                         activation="relu"),
    "1x1-nobias": dict(kernel_size=1, use_bias=False),
    "4x4-valid-stride3-tanh": dict(kernel_size=4, strides=3, activation="tanh"),
}


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d(case, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((9, 11, 3)), k.layers.Conv2D(4, **CONV_CASES[case]),
                      k.layers.Conv2D(2, 2, padding="same")] + head(k))
    run_case(m, images((9, 11, 3)), tmp_path, record_property)


@pytest.mark.parametrize("padding", ["valid", "same", "causal"])
def test_conv1d(padding, tmp_path, record_property):
    k = keras()
    m = k.Sequential([k.Input((10, 3)), k.layers.Conv1D(4, 3, padding=padding, dilation_rate=2),
                      k.layers.Conv1D(3, 2, strides=2, padding="same")] + head(k))
    run_case(m, images((10, 3)), tmp_path, record_property)


POOL_CASES = [("max", (2, 2), None, "valid"), ("max", (3, 3), (2, 2), "same"),
              ("max", (2, 3), (1, 2), "valid"), ("avg", (2, 2), None, "valid"),
              ("avg", (3, 3), (2, 2), "same"), ("avg", (3, 2), (2, 1), "same")]


@pytest.mark.parametrize("mode,pool,strides,padding", POOL_CASES)
def test_pooling2d(mode, pool, strides, padding, tmp_path, record_property):
    k = keras()
    layer = {"max": k.layers.MaxPooling2D, "avg": k.layers.AveragePooling2D}[mode]
    m = k.Sequential([k.Input((7, 9, 2)), k.layers.Conv2D(3, 2, activation="tanh"),
                      layer(pool, strides=strides, padding=padding)] + head(k))
    run_case(m, images((7, 9, 2)), tmp_path, record_property)


@pytest.mark.parametrize("mode", ["max", "avg"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pooling1d(mode, padding, tmp_path, record_property):
    k = keras()
    layer = {"max": k.layers.MaxPooling1D, "avg": k.layers.AveragePooling1D}[mode]
    m = k.Sequential([k.Input((11, 2)), k.layers.Conv1D(3, 2), layer(3, strides=2, padding=padding)]
                     + head(k))
    run_case(m, images((11, 2)), tmp_path, record_property)


@pytest.mark.parametrize("layer", ["GlobalAveragePooling2D", "GlobalMaxPooling2D",
                                   "GlobalAveragePooling2D-keepdims"])
def test_global_pooling(layer, tmp_path, record_property):
    k = keras()
    keep = layer.endswith("keepdims")
    pool = getattr(k.layers, layer.split("-")[0])(keepdims=keep)
    m = k.Sequential([k.Input((5, 6, 2)), k.layers.Conv2D(4, 3, padding="same"), pool] + head(k))
    run_case(m, images((5, 6, 2)), tmp_path, record_property)


def test_cnn_block_with_batchnorm_dropout_and_padding(tmp_path, record_property):
    """The study CNN's layers: Conv2D(no bias) -> BN -> ReLU -> MaxPool, ZeroPadding2D,
    Flatten -> Dense -> Dropout -> Dense, with inference-mode BN statistics."""
    k = keras()
    m = k.Sequential([k.Input((10, 9, 3)), k.layers.RandomFlip("horizontal"),
                      k.layers.Conv2D(4, 3, padding="same", use_bias=False),
                      k.layers.BatchNormalization(), k.layers.ReLU(), k.layers.MaxPooling2D(2),
                      k.layers.ZeroPadding2D(((1, 0), (0, 2))), k.layers.Conv2D(3, 2),
                      k.layers.BatchNormalization(momentum=0.9, epsilon=1e-2),
                      k.layers.Flatten(), k.layers.Dense(6, activation="relu"),
                      k.layers.Dropout(0.3), k.layers.Dense(3, activation="softmax")])
    run_case(m, images((10, 9, 3)), tmp_path, record_property)


@pytest.mark.parametrize("where", ["conv", "dense", "axis1"])
def test_batchnorm_training_mode(where, tmp_path, record_property):
    """training=True: batch statistics (and Keras' gradient through them); "axis1"
    normalizes a middle axis (the channel axis is moved last and back)."""
    k = keras()
    if where == "conv":
        body = [k.Input((6, 7, 2)), k.layers.Conv2D(3, 3, padding="same"), k.layers.BatchNormalization(),
                k.layers.ReLU(), k.layers.Flatten()]
        x = images((6, 7, 2))
    elif where == "axis1":
        body = [k.Input((4, 6)), k.layers.Dense(5), k.layers.BatchNormalization(axis=1, momentum=0.9),
                k.layers.Activation("tanh"), k.layers.Flatten()]
        x = images((4, 6))
    else:
        body = [k.Input((5,)), k.layers.Dense(4), k.layers.BatchNormalization(center=False),
                k.layers.Activation("tanh"), k.layers.Dense(4), k.layers.BatchNormalization(scale=False)]
        x = images((5,))
    m = k.Sequential(body + [k.layers.Dense(3, activation="softmax")])
    run_case(m, x, tmp_path, record_property, training=True)


def test_conv_block_split_over_worker_threads(tmp_path, record_property, monkeypatch):
    """A batch large enough that Conv2D, BatchNormalization (batch statistics), ReLU and
    pooling run their passes in row blocks on two worker threads: the gradients equal the
    float64 twin, and equal the one-thread computation to rounding."""
    from scratch_layers import blas
    k = keras()
    m = k.Sequential([k.Input((18, 17, 3)), k.layers.Conv2D(24, 3, padding="same", use_bias=False),
                      k.layers.BatchNormalization(), k.layers.ReLU(), k.layers.MaxPooling2D(2),
                      k.layers.Conv2D(16, 3, padding="same"), k.layers.BatchNormalization(),
                      k.layers.ReLU(), k.layers.AveragePooling2D(3)] + head(k))
    x = np.random.default_rng(3).normal(0.3, 1.0, (20, 18, 17, 3)).astype(np.float32)
    assert 20 * 18 * 17 * 24 >= blas.PARALLEL_MIN_ITEMS  # the first block really splits
    monkeypatch.setattr(blas, "default_workers", lambda: 2)
    sm = run_case(m, x, tmp_path, record_property, training=True, y=labels(len(x)))
    y = labels(len(x))
    loss2, grads2 = sm.loss_and_gradients(x, y, training=True)
    monkeypatch.setattr(blas, "default_workers", lambda: 1)
    loss1, grads1 = sm.loss_and_gradients(x, y, training=True)
    assert loss1 == pytest.approx(loss2, rel=1e-14)
    for g1, g2 in zip(grads1, grads2):
        np.testing.assert_allclose(g2, g1, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------- recurrent

V, T = 17, 8


def id_batch(pattern, n=7, seed=0):
    ids = np.random.default_rng(seed).integers(1, V, (n, T))
    if pattern in ("mixed", "post"):
        ids[1, 5:] = 0
        ids[2, 2:] = 0
        ids[4, 7:] = 0
    if pattern in ("mixed", "pre"):
        ids[3, :4] = 0
        ids[5, :1] = 0
    if pattern == "mixed":
        ids[0, [2, 3, 6]] = 0   # interior padding
        ids[6, :] = 0           # all padding
    return ids.astype("int32")


def rnn(k, cell, **kw):
    if cell == "GRU-reset_before":
        return k.layers.GRU(reset_after=False, **kw)
    return getattr(k.layers, cell)(**kw)


def id_model(k, layers, classes=3, mask_zero=True):
    return k.Sequential([k.Input((T,), dtype="int32"), k.layers.Embedding(V, 5, mask_zero=mask_zero)]
                        + layers + [k.layers.Dense(classes, activation="softmax")])


CELLS = ["SimpleRNN", "LSTM", "GRU", "GRU-reset_before"]


@pytest.mark.parametrize("pattern", ["mixed", "post", "pre", "none"])
@pytest.mark.parametrize("cell", CELLS)
def test_rnn_masks(cell, pattern, tmp_path, record_property):
    k = keras()
    m = id_model(k, [rnn(k, cell, units=4)])
    run_case(m, id_batch(pattern), tmp_path, record_property)


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_stacked_sequences_go_backwards(cell, tmp_path, record_property):
    k = keras()
    m = id_model(k, [rnn(k, cell, units=4, return_sequences=True),
                     rnn(k, cell, units=3, return_sequences=True, go_backwards=True),
                     rnn(k, cell, units=3)])
    run_case(m, id_batch("mixed"), tmp_path, record_property)


@pytest.mark.parametrize("merge", ["concat", "sum", "ave", "mul"])
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional(cell, merge, tmp_path, record_property):
    k = keras()
    m = id_model(k, [k.layers.Bidirectional(rnn(k, cell, units=4, return_sequences=True), merge_mode=merge),
                     k.layers.Bidirectional(rnn(k, cell, units=3), merge_mode=merge)])
    run_case(m, id_batch("mixed"), tmp_path, record_property)


def test_rnn_activations_and_masked_global_pooling(tmp_path, record_property):
    k = keras()
    m = id_model(k, [k.layers.LSTM(4, activation="relu", recurrent_activation="tanh", return_sequences=True),
                     k.layers.SimpleRNN(3, activation="sigmoid", return_sequences=True),
                     k.layers.GlobalMaxPooling1D()])
    run_case(m, id_batch("post"), tmp_path, record_property)


def test_text_vectorization_model(tmp_path, record_property):
    """Raw strings in: TextVectorization has no gradient; the Embedding table gets one."""
    m, texts = tiny_text_model(keras(), "LSTM", 5, 6, seed=0)
    sm, _ = save_load(m, tmp_path)
    compare_gradients(m, sm, texts, labels(5))


# ----------------------------------------------------------------------------- modes, errors

def test_dropout_training_mask_from_seed(tmp_path):
    k = keras()
    m = k.Sequential([k.Input((6,)), k.layers.Dense(8, activation="relu"), k.layers.Dropout(0.5),
                      k.layers.Dense(3, activation="softmax")])
    randomize_weights(m, 0)
    sm, _ = save_load(m, tmp_path)
    x, y = images((6,)), labels()
    a = sm.loss_and_gradients(x, y, training=True, seed=3)
    b = sm.loss_and_gradients(x, y, training=True, seed=3)
    c = sm.loss_and_gradients(x, y, training=False)
    assert a[0] == b[0] and all(np.array_equal(p, q) for p, q in zip(a[1], b[1]))
    assert a[0] != c[0]
    assert finite_difference_check(sm, x, y, training=True, seed=3) < 1e-6


def test_random_augmentation_in_training_mode(tmp_path):
    k = keras()
    m = k.Sequential([k.Input((6, 6, 2)), k.layers.RandomFlip("horizontal"),
                      k.layers.RandomTranslation(0.1, 0.1), k.layers.Conv2D(2, 3)] + head(k))
    randomize_weights(m, 0)
    sm, _ = save_load(m, tmp_path)
    x, y = images((6, 6, 2)), labels()
    with pytest.raises(scratch_layers.NoBackwardError, match="RandomFlip.*augmentation='identity'"):
        sm.loss_and_gradients(x, y, training=True)
    identity = sm.loss_and_gradients(x, y, training=True, augmentation="identity")
    inference = sm.loss_and_gradients(x, y, training=False)
    assert identity[0] == inference[0]


def test_layer_without_backward_is_named(tmp_path):
    """Every registered layer has a backward now (TextVectorization needs none: it reads
    strings); a layer class without one is named by the error."""
    from scratch_layers.layers.layer import Layer
    k = keras()
    m = k.Sequential([k.Input((6, 6, 2)), k.layers.DepthwiseConv2D(3, name="dw")] + head(k))
    sm, _ = save_load(m, tmp_path)
    dw = sm.layers[0]
    dw.__class__ = type("DepthwiseConv2D", (type(dw),), {"forward_train": Layer.forward_train,
                                                          "backward": Layer.backward})
    assert sm.predict(images((6, 6, 2))).shape == (N, 3)
    with pytest.raises(scratch_layers.NoBackwardError, match="DepthwiseConv2D layer 'dw'"):
        sm.loss_and_gradients(images((6, 6, 2)), labels())


def test_regularizers_are_refused(tmp_path):
    k = keras()
    m = k.Sequential([k.Input((4,)), k.layers.Dense(3, activation="softmax", kernel_regularizer="l2")])
    sm, _ = save_load(m, tmp_path)
    with pytest.raises(scratch_layers.NoBackwardError, match="kernel_regularizer"):
        sm.loss_and_gradients(images((4,)), labels())


def test_bad_labels(tmp_path):
    k = keras()
    m = k.Sequential([k.Input((4,)), k.layers.Dense(3, activation="softmax")])
    sm, _ = save_load(m, tmp_path)
    with pytest.raises(scratch_layers.InputError, match=r"labels must be in \[0, 3\)"):
        sm.loss_and_gradients(images((4,)), np.array([0, 1, 2, 3, 0]))
    with pytest.raises(scratch_layers.InputError, match="shape"):
        sm.loss_and_gradients(images((4,)), np.zeros(3, int))


def test_float32_model_gradients(tmp_path):
    """load_model(dtype='float32') computes the backward pass in float32 too."""
    k = keras()
    m = id_model(k, [k.layers.Bidirectional(k.layers.LSTM(4))])
    randomize_weights(m, 1)
    sm, path = save_load(m, tmp_path)
    sm32 = scratch_layers.load_model(path, dtype="float32")
    x, y = id_batch("mixed"), labels(7)
    _, g64 = sm.loss_and_gradients(x, y)
    _, g32 = sm32.loss_and_gradients(x, y)
    assert all(g.dtype == np.float32 for g in g32)
    assert all(np.allclose(a, b, atol=1e-5, rtol=1e-5) for a, b in zip(g32, g64))


def test_predict_unchanged_by_training_pass(tmp_path):
    """A backward pass does not change predict (which keeps its fused fast path)."""
    k = keras()
    m = k.Sequential([k.Input((8, 8, 3)), k.layers.Conv2D(4, 3, padding="same", use_bias=False),
                      k.layers.BatchNormalization(), k.layers.ReLU(), k.layers.MaxPooling2D(2)] + head(k))
    randomize_weights(m, 0)
    sm, _ = save_load(m, tmp_path)
    x = images((8, 8, 3))
    before = sm.predict(x)
    sm.loss_and_gradients(x, labels(), training=True)
    np.testing.assert_array_equal(sm.predict(x), before)


# ----------------------------------------------------------------------------- finite differences

def _tiny(kind):
    k = keras()
    if kind == "cnn-bn-training":
        return k.Sequential([k.Input((5, 5, 2)), k.layers.Conv2D(3, 2, padding="same", strides=2),
                             k.layers.BatchNormalization(), k.layers.ReLU(),
                             k.layers.AveragePooling2D(2, padding="same"), k.layers.Flatten(),
                             k.layers.Dense(3, activation="softmax")]), images((5, 5, 2)), True
    cell = {"lstm": k.layers.LSTM, "gru": k.layers.GRU, "simple_rnn": k.layers.SimpleRNN}[kind.split("-")[0]]
    return id_model(k, [k.layers.Bidirectional(cell(3, return_sequences=True)),
                        k.layers.GlobalMaxPooling1D()]), id_batch("mixed"), False


@pytest.mark.parametrize("kind", ["cnn-bn-training", "lstm", "gru", "simple_rnn"])
def test_finite_differences(kind, tmp_path, record_property):
    m, x, training = _tiny(kind)
    randomize_weights(m, 4)
    sm, _ = save_load(m, tmp_path)
    worst = finite_difference_check(sm, x, labels(len(x)), training=training)
    record_property("max_relative_error", worst)
    print(f"{kind}: worst relative error vs central differences {worst:.3g}")
    assert worst < 1e-6
