"""The tiled depthwise convolution and what a convolution absorbs for predict.

* :func:`depthwise_conv2d` (tiles of output rows or of whole images, padding and the
  column gather done in a reused buffer, one einsum per tile, bias and relu / clipped relu
  applied per tile) equals the loop reference of ``scratch_reference`` for odd sizes,
  strides 1 to 3, 'same' / 'valid' / explicit pads, depth multipliers and dilation, with
  tiles small enough to split images into single rows and large enough to hold several
  images; float32 stays float32.
* Predict's plan folds a linear DepthwiseConv2D or Conv2D with the BatchNormalization and
  ReLU6 after it (ReLU(max_value=6), Activation('relu6'), as MobileNetV2 writes them)
  into ONE step: equal to Keras, and to the unfused layer-by-layer path to float64
  rounding. ``Layer.relu_ceiling`` says which ReLU configurations are a clip to [0, c].
"""
import itertools
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import check_model, keras  # noqa: E402
from scratch_reference import depthwise_conv2d_ref  # noqa: E402

from scratch_layers import activations  # noqa: E402
from scratch_layers.layers import conv  # noqa: E402
from scratch_layers.layers.activation import Activation, ClippedReLU, ReLU, in_place  # noqa: E402
from scratch_layers.layers.conv import depthwise_conv2d, pad2d  # noqa: E402

pytestmark = pytest.mark.scratch

# tile budgets: one output row (and less) per tile, a few rows, the default (whole images)
TILES = [1, 600, conv.DEPTHWISE_TILE_BYTES]


def _configs():
    sizes = [(7, 5), (6, 9), (1, 4), (9, 11)]
    kernels = [(3, 3), (2, 3), (1, 1), (3, 5), (5, 2)]
    strides = [(1, 1), (2, 2), (3, 1), (1, 3), (2, 3)]
    for (h, w), k, s, d, pad in itertools.product(sizes, kernels, strides, [(1, 1), (2, 2), (2, 1)],
                                                  ["same", "valid"]):
        if max(s) > 1 and max(d) > 1:  # Keras refuses strides > 1 with dilation > 1
            continue
        if pad == "valid" and (h < (k[0] - 1) * d[0] + 1 or w < (k[1] - 1) * d[1] + 1):
            continue
        yield (h, w), k, s, d, pad


CONFIGS = list(_configs())


@pytest.mark.parametrize("multiplier", [1, 2])
@pytest.mark.parametrize("tile", TILES)
def test_tiled_depthwise_equals_loop_reference(tile, multiplier, monkeypatch):
    """Every configuration, every tile size: the einsum over the tile buffer sums the same
    products as the loop (float64, to rounding)."""
    monkeypatch.setattr(conv, "DEPTHWISE_TILE_BYTES", tile)
    rng = np.random.default_rng(7)
    worst = 0.0
    for (h, w), k, s, d, pad in CONFIGS:
        x = rng.standard_normal((3, h, w, 3))
        kernel = rng.standard_normal(k + (3, multiplier))
        ref = depthwise_conv2d_ref(x, kernel, s, pad, d)
        got = depthwise_conv2d(x, kernel, s, pad, d)
        assert got.shape == ref.shape, ((h, w), k, s, d, pad)
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst < 1e-13, worst


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("activation", ["linear", "relu", "relu6-clipped", "tanh"])
def test_tiled_depthwise_bias_and_activation(tile, activation, monkeypatch):
    """Bias and the activation, applied per tile (relu, a clipped relu) or afterwards (any
    other), give activation(conv + bias); float32 in, float32 out."""
    monkeypatch.setattr(conv, "DEPTHWISE_TILE_BYTES", tile)
    fn = {"linear": activations.linear, "relu": activations.relu, "relu6-clipped": ClippedReLU(6.0),
          "tanh": activations.tanh}[activation]
    plain = {"relu6-clipped": activations.relu6}.get(activation, fn)
    rng = np.random.default_rng(8)
    for s, pad in [((1, 1), "same"), ((2, 2), "same"), ((2, 2), "valid")]:
        x = rng.standard_normal((5, 9, 7, 4)) * 4
        kernel = rng.standard_normal((3, 3, 4, 2))
        bias = rng.standard_normal(8)
        ref = plain(depthwise_conv2d_ref(x, kernel, s, pad) + bias)
        got = depthwise_conv2d(x, kernel, s, pad, (1, 1), bias, fn)
        np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13)
        got32 = depthwise_conv2d(x.astype(np.float32), kernel.astype(np.float32), s, pad, (1, 1),
                                 bias.astype(np.float32), fn)
        assert got32.dtype == np.float32
        np.testing.assert_allclose(got32, ref, rtol=1e-5, atol=1e-5)


def test_explicit_pads_equal_zero_padding_first():
    """Explicit ((top, bottom), (left, right)) pads, as a DepthwiseConv2D that absorbed the
    ZeroPadding2D before it runs: equal to padding the input first."""
    rng = np.random.default_rng(9)
    for pads, s in [(((0, 1), (0, 1)), (2, 2)), (((1, 1), (1, 1)), (2, 2)), (((2, 0), (1, 3)), (1, 1))]:
        x = rng.standard_normal((2, 8, 7, 3))
        kernel = rng.standard_normal((3, 3, 3, 2))
        ref = depthwise_conv2d_ref(pad2d(x, pads), kernel, s, "valid")
        np.testing.assert_allclose(depthwise_conv2d(x, kernel, s, pads), ref, rtol=1e-13, atol=1e-13)


def test_absorb_zero_padding(tmp_path):
    """DepthwiseConv2D.absorb_zero_padding: the layer that pads as it convolves equals
    ZeroPadding2D then the layer (MobileNetV2's strided blocks); a 'same' layer declines."""
    import scratch_layers
    k = keras()
    L = k.layers
    m = k.Sequential([k.Input((9, 8, 3)), L.ZeroPadding2D(((0, 1), (0, 1))),
                      L.DepthwiseConv2D(3, strides=2, depth_multiplier=2, name="dw"),
                      L.DepthwiseConv2D(3, padding="same", name="dw_same")])
    m.save(tmp_path / "m.keras")
    sm = scratch_layers.load_model(tmp_path / "m.keras")
    pad, dw, dw_same = sm.layers[-3:]
    fused = dw.absorb_zero_padding(pad.pads)
    assert fused is not None and fused is not dw and dw.padding == "valid"
    assert dw_same.absorb_zero_padding(pad.pads) is None
    x = np.random.default_rng(1).standard_normal((4, 9, 8, 3))
    np.testing.assert_allclose(fused.forward(x), dw.forward(pad.forward(x)), rtol=1e-13, atol=1e-13)


# --------------------------------------------------------------------- ReLU configurations

@pytest.mark.parametrize("layer,ceiling", [
    (ReLU({"name": "r"}, []), math.inf),
    (ReLU({"name": "r", "max_value": 6.0}, []), 6.0),
    (ReLU({"name": "r", "max_value": 1.5}, []), 1.5),
    (ReLU({"name": "r", "max_value": 6.0, "threshold": 0.5}, []), None),
    (ReLU({"name": "r", "negative_slope": 0.1}, []), None),
    (ReLU({"name": "r", "max_value": 6.0, "negative_slope": 0.1}, []), None),
    (ReLU({"name": "r", "max_value": -1.0}, []), None),
    (Activation({"name": "a", "activation": "relu"}, []), math.inf),
    (Activation({"name": "a", "activation": "relu6"}, []), 6.0),
    (Activation({"name": "a", "activation": "tanh"}, []), None),
], ids=["relu", "relu-max6", "relu-max1.5", "relu6-threshold", "leaky", "leaky-max6", "max<0",
        "act-relu", "act-relu6", "act-tanh"])
def test_relu_ceiling(layer, ceiling):
    """A ReLU is a clip to [0, ceiling] exactly when its slope and threshold are 0; the
    clip gives the layer's own values, NaN and the ends included."""
    assert layer.relu_ceiling() == ceiling
    assert layer.is_plain_relu() == (ceiling == math.inf)
    if ceiling is not None and ceiling != math.inf:
        x = np.array([np.nan, -np.inf, -2.0, -0.0, 0.0, 1.0, ceiling, ceiling + 1, np.inf])
        np.testing.assert_array_equal(ClippedReLU(ceiling)(x.copy()), layer.forward(x))
        y = x.copy()
        assert in_place(ClippedReLU(ceiling))(y) is y


# --------------------------------------------------------------------- fused in Keras models

def _model(k, first, act):
    L = k.layers
    layers = [k.Input((11, 9, 4)), L.Conv2D(6, 1, name="expand"), first, L.BatchNormalization(name="bn")]
    layers += [{"relu6": L.ReLU(6.0), "relu6-act": L.Activation("relu6"), "relu": L.ReLU(),
                "threshold": L.ReLU(6.0, threshold=0.1)}[act]]
    return k.Sequential(layers + [L.GlobalAveragePooling2D()])


@pytest.mark.parametrize("first", ["dw-s1-same", "dw-s2-valid-m2-nobias", "conv-s1-same-nobias"])
@pytest.mark.parametrize("act", ["relu6", "relu6-act", "relu", "threshold"])
def test_conv_batchnorm_relu6_is_one_step(first, act, tmp_path, record_property):
    """Linear DepthwiseConv2D / Conv2D -> BatchNormalization -> ReLU6 is one predict step
    (a ReLU with a threshold stays a step of its own); predict equals Keras float32 and
    the unfused path, float64 to rounding and float32 to its resolution."""
    import scratch_layers
    k = keras()
    L = k.layers
    layer = {"dw-s1-same": lambda: L.DepthwiseConv2D(3, padding="same", name="conv"),
             "dw-s2-valid-m2-nobias": lambda: L.DepthwiseConv2D(3, strides=2, depth_multiplier=2,
                                                                 use_bias=False, name="conv"),
             "conv-s1-same-nobias": lambda: L.Conv2D(5, 3, padding="same", use_bias=False,
                                                     name="conv")}[first]()
    m = _model(k, layer, act)
    # inputs scaled so that the clip at 6 and at 0 both bind
    x = np.random.default_rng(2).normal(0, 6, (5, 11, 9, 4)).astype("float32")
    sm, _ = check_model(m, x, tmp_path, record_property)
    steps = [step for step in sm._plan if "conv" in [n.name for n in step.nodes]]
    assert len(steps) == 1
    names = [n.name for n in steps[0].nodes]
    assert names[:2] == ["conv", "bn"] and len(names) == (3 if act != "threshold" else 2), names
    assert len(sm._plan) == (4 if act == "threshold" else 3), [s[0].name for s in sm._plan]
    unfused = list(sm.intermediate_outputs(x).values())[-1]
    np.testing.assert_allclose(sm.predict(x), unfused, rtol=1e-13, atol=1e-13)
    sm32 = scratch_layers.load_model(tmp_path / "m.keras", dtype="float32")
    got32 = sm32.predict(x)
    assert got32.dtype == np.float32
    np.testing.assert_allclose(got32, unfused, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got32, list(sm32.intermediate_outputs(x).values())[-1],
                               rtol=1e-5, atol=1e-5)
