"""scratch_layers vs Keras: ConvLSTM1D, ConvLSTM2D and ConvLSTM3D (forward node by node
against float32 Keras and the float64 twin, gradients against tf.GradientTape on the twin),
with random non-default weights."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras, randomize_weights  # noqa: E402
from test_scratch_recurrent_state import check_forward, check_gradients, head  # noqa: E402

pytestmark = pytest.mark.scratch

OPTIONS = {
    "valid": {},
    "same-sequences": dict(padding="same", return_sequences=True),
    "strides-backwards": dict(strides=2, padding="same", go_backwards=True),
    "dilation-state": dict(dilation_rate=2, return_state=True),
    "relu-hard_sigmoid-nobias": dict(activation="relu", recurrent_activation="hard_sigmoid",
                                     use_bias=False, return_sequences=True),
}
# RNN backward takes the activations' derivatives from their outputs: hard_sigmoid has none
# (NoBackwardError, as for LSTM), so the gradient case uses relu with sigmoid
GRAD_OPTIONS = dict(OPTIONS, **{"relu-hard_sigmoid-nobias": dict(
    activation="relu", recurrent_activation="sigmoid", use_bias=False, return_sequences=True)})


def batch(rank, seed=0):
    shape = {1: (5, 4, 9, 3), 2: (5, 4, 6, 7, 3), 3: (3, 3, 4, 5, 4, 2)}[rank]
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def conv_lstm(k, rank, **kw):
    kernel = {1: 3, 2: (3, 2), 3: (2, 3, 2)}[rank]
    return getattr(k.layers, f"ConvLSTM{rank}D")(2, kernel, **kw)


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_lstm_forward(rank, options, tmp_path):
    k = keras()
    x = batch(rank)
    inp = k.Input(x.shape[1:])
    out = conv_lstm(k, rank, **OPTIONS[options])(inp)
    check_forward(k.Model(inp, list(out) if isinstance(out, (list, tuple)) else out), x, tmp_path)


@pytest.mark.parametrize("options", sorted(GRAD_OPTIONS))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_lstm_gradients(rank, options, tmp_path):
    k = keras()
    x = batch(rank)
    inp = k.Input(x.shape[1:])
    out = conv_lstm(k, rank, **GRAD_OPTIONS[options])(inp)
    check_gradients(k.Model(inp, head(k, list(out) if isinstance(out, (list, tuple)) else [out])), x, tmp_path)


def test_conv_lstm_stacked_and_set_weights(tmp_path):
    """Two ConvLSTM2D (the second reads the first's sequences); set_weights rebuilds the
    reordered gate kernels."""
    import scratch_layers

    k = keras()
    x = batch(2)
    inp = k.Input(x.shape[1:])
    h = conv_lstm(k, 2, padding="same", return_sequences=True)(inp)
    out = k.layers.ConvLSTM2D(3, 3)(h)
    m = randomize_weights(k.Model(inp, out), 5)
    path = os.path.join(str(tmp_path), "c.keras")
    m.save(path)
    sm = scratch_layers.load_model(path)
    assert np.allclose(sm.predict(x), m.predict(x, verbose=0), atol=1e-5)
    sm.set_weights([w * 0.7 for w in sm.get_weights()])
    m.set_weights([w * 0.7 for w in m.get_weights()])
    assert np.allclose(sm.predict(x), m.predict(x, verbose=0), atol=1e-5)


def test_the_input_projection_is_one_convolution_over_all_frames(monkeypatch):
    """ConvLSTM's input convolution runs once for all T*N frames; the loop over time only
    runs the recurrent convolution (one per step)."""
    from scratch_layers.layers import convlstm

    calls = []
    real = convlstm.conv2d

    def spy(x, kernel, *a, **kw):
        calls.append(x.shape[0])
        return real(x, kernel, *a, **kw)
    monkeypatch.setattr(convlstm, "conv2d", spy)
    rng = np.random.default_rng(0)
    w = [rng.normal(size=(3, 3, 3, 8)), rng.normal(size=(3, 3, 2, 8)), rng.normal(size=8)]
    layer = convlstm.ConvLSTM2D({"name": "c", "filters": 2, "kernel_size": [3, 3]}, w)
    layer.forward(rng.normal(size=(5, 4, 6, 7, 3)))
    assert calls == [4 * 5] + [5] * 4


def test_conv_lstm_refuses_what_it_does_not_support():
    from scratch_layers.errors import UnsupportedLayerError
    from scratch_layers.layers.convlstm import ConvLSTM2D

    w = [np.zeros((3, 3, 3, 8)), np.zeros((3, 3, 2, 8)), np.zeros(8)]
    base = {"name": "c", "filters": 2, "kernel_size": [3, 3]}
    with pytest.raises(UnsupportedLayerError, match="data_format"):
        ConvLSTM2D(dict(base, data_format="channels_first"), w)
    with pytest.raises(UnsupportedLayerError, match="stateful"):
        ConvLSTM2D(dict(base, stateful=True), w)
    layer = ConvLSTM2D(base, w)
    with pytest.raises(UnsupportedLayerError, match="mask"):
        layer.forward(np.zeros((2, 3, 5, 5, 3)), np.ones((2, 3, 5, 5), bool))


# --- Bidirectional around ConvLSTM, and per-pixel masks ------------------------------------

BIDIRECTIONAL = {  # rank: (merge_mode, layer options)
    1: ("concat", dict(padding="same", return_sequences=True, return_state=True)),
    2: (None, dict(strides=2, return_state=True)),
    3: ("sum", dict(padding="same", return_sequences=True)),
}


def test_conv_lstm_refuses_what_it_does_not_support_with_a_mask_of_other_sizes():
    """A per-pixel mask must have the output maps' sizes (Keras fails otherwise)."""
    from scratch_layers.errors import UnsupportedLayerError
    from scratch_layers.layers.convlstm import ConvLSTM2D

    w = [np.zeros((3, 3, 3, 8)), np.zeros((3, 3, 2, 8)), np.zeros(8)]
    layer = ConvLSTM2D({"name": "c", "filters": 2, "kernel_size": [3, 3]}, w)
    with pytest.raises(UnsupportedLayerError, match="padding='same'"):
        layer.forward(np.zeros((2, 3, 5, 5, 3)), np.ones((2, 3, 5, 5), bool))
    same = ConvLSTM2D({"name": "c", "filters": 2, "kernel_size": [3, 3], "padding": "same"}, w)
    with pytest.raises(UnsupportedLayerError, match="mask"):
        same.forward(np.zeros((2, 3, 5, 5, 3)), np.ones((2, 3, 5, 4), bool))
    assert same.forward(np.zeros((2, 3, 5, 5, 3)), np.ones((2, 3, 5), bool)).shape == (2, 5, 5, 2)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_bidirectional_conv_lstm(rank, tmp_path):
    """Bidirectional(ConvLSTMnD): forward node by node (each output with return_state or
    merge_mode None) and gradients."""
    k = keras()
    x = batch(rank, seed=rank)
    merge, options = BIDIRECTIONAL[rank]
    inp = k.Input(x.shape[1:])
    out = k.layers.Bidirectional(conv_lstm(k, rank, **options), merge_mode=merge)(inp)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    check_forward(k.Model(inp, outs if len(outs) > 1 else out), x, tmp_path)
    check_gradients(k.Model(inp, head(k, outs)), x, tmp_path)


def masked_batch(rank, seed=0):
    """Input with masked pixels (every channel 0): single pixels, whole frames (a masked
    timestep) and one all-masked sample."""
    x = batch(rank, seed)
    rng = np.random.default_rng(seed + 10)
    pixels = rng.random(x.shape[:-1]) < 0.3
    x[pixels] = 0.0
    x[1, 2] = 0.0
    x[2] = 0.0
    return x


PIXEL_MASK = {
    "sequences-backwards": dict(return_sequences=True, go_backwards=True),
    "zero_output-state": dict(return_sequences=True, zero_output_for_mask=True, return_state=True),
    "last": {},
}


@pytest.mark.parametrize("options", sorted(PIXEL_MASK))
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_conv_lstm_with_a_per_pixel_mask(rank, options, tmp_path):
    """Masking before ConvLSTM gives a (N, T, *spatial) mask: Keras keeps each masked
    pixel's state (and output). 'same' padding, strides 1: the output maps are the
    input's, as Keras needs. Forward and gradients."""
    k = keras()
    x = masked_batch(rank)
    inp = k.Input(x.shape[1:])
    m = k.layers.Masking(0.0)(inp)
    out = conv_lstm(k, rank, padding="same", **PIXEL_MASK[options])(m)
    outs = list(out) if isinstance(out, (list, tuple)) else [out]
    check_forward(k.Model(inp, outs if len(outs) > 1 else out), x, tmp_path)
    check_gradients(k.Model(inp, head(k, outs)), x, tmp_path)


def test_conv_lstm1d_after_an_embedding_with_mask_zero(tmp_path):
    """Embedding(mask_zero) on (N, T, L) ids: the per-pixel mask (N, T, L), through the
    Embedding-then-RNN path of predict; then a Bidirectional ConvLSTM1D on its sequences."""
    k = keras()
    ids = np.random.default_rng(4).integers(0, 5, (5, 4, 7)).astype("int32")
    ids[2] = 0
    inp = k.Input(ids.shape[1:], dtype="int32")
    e = k.layers.Embedding(5, 3, mask_zero=True)(inp)
    h = k.layers.ConvLSTM1D(2, 3, padding="same", return_sequences=True)(e)
    out = k.layers.Bidirectional(k.layers.ConvLSTM1D(2, 2, padding="same"), merge_mode="mul")(h)
    check_forward(k.Model(inp, out), ids, tmp_path)
    check_gradients(k.Model(inp, head(k, [out])), ids, tmp_path)


def test_a_per_pixel_mask_on_valid_padding_is_refused_as_keras_fails(tmp_path):
    import scratch_layers
    from scratch_layers.errors import UnsupportedLayerError

    k = keras()
    x = masked_batch(2)
    inp = k.Input(x.shape[1:])
    out = conv_lstm(k, 2, return_sequences=True)(k.layers.Masking(0.0)(inp))
    path = os.path.join(str(tmp_path), "valid.keras")
    k.Model(inp, out).save(path)
    with pytest.raises(Exception):
        k.Model(inp, out).predict(x, verbose=0)
    with pytest.raises(UnsupportedLayerError, match="padding='same'"):
        scratch_layers.load_model(path).predict(x)
