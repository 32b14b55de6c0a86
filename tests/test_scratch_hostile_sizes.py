"""Hostile sizes in the 1-D and 2-D layers whose config alone can make an array arbitrarily
large: UpSampling1D/2D, ZeroPadding1D/2D, RepeatVector, Conv1DTranspose/Conv2DTranspose
(strides, and the padded buffer of a 'same' one with a huge dilation), 'same'
MaxPooling/AveragePooling1D/2D with a huge pool (their padded input), and Conv3DTranspose's
padded buffer. Each is a ModelFileError naming the cap
(:data:`scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS`) before the array is allocated:
at load time from the config alone (a lower bound checked when the layer is built), or from
the load-time probe sample's real shape, with a fixed input shape and with unknown input
sizes. The traced peak stays far below the array asked for (10**9 values and more, that is
8 GB and more in float64).

Also the convolutions that zero-pad their input ('same', Conv1D's 'causal') with a huge
dilation: Conv1D/Conv2D (grouped too), DepthwiseConv1D/2D, SeparableConv1D/2D, ConvLSTM1D/2D/3D;
'same' pooling with a pool far larger than its input (exact and quick: the pool offsets that
read padding only are skipped); and the operation nodes whose output a config can blow up
(broadcasting against a constant, matmul, arange).

The 3-D layers' and the preprocessing layers' caps have their own tests
(test_scratch_3d.py, the Resizing/CategoryEncoding/Hashing tests); the model-file
hostility (zip, h5, JSON) is test_scratch_hostile.py's.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras, refusal_peak  # noqa: E402
from test_scratch_3d import hostile_file, refused_at_load  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers import ModelFileError  # noqa: E402

pytestmark = pytest.mark.scratch

PEAK_BYTES = 64 * 2 ** 20
BIG = 10 ** 5  # per axis: 10**10 cells in 2-D, far over the cap


# id -> (layer factory, fixed input shape, unknown input shape, config edit). The edit makes
# the array of even the smallest input exceed the cap (refused when the layer is built), or
# (the "-per-call" cases) passes the config's lower bound and exceeds the cap on the
# probe's real shape only.
HOSTILE = {
    "upsampling2d": (lambda L: L.UpSampling2D(2), (2, 2, 1), (None, None, 1),
                     lambda c: c.update(size=[BIG, BIG])),
    "upsampling2d-bilinear": (lambda L: L.UpSampling2D(2, interpolation="bilinear"), (2, 2, 1),
                              (None, None, 1), lambda c: c.update(size=[BIG, BIG])),
    "upsampling2d-per-call": (lambda L: L.UpSampling2D(2), (8, 8, 64), (None, None, 64),
                              lambda c: c.update(size=[2 ** 12, 2 ** 12])),
    "upsampling1d": (lambda L: L.UpSampling1D(2), (2, 1), (None, 1), lambda c: c.update(size=10 ** 9)),
    "zeropadding2d": (lambda L: L.ZeroPadding2D(1), (2, 2, 1), (None, None, 1),
                      lambda c: c.update(padding=[[BIG, 0], [0, BIG]])),
    "zeropadding2d-per-call": (lambda L: L.ZeroPadding2D(1), (8, 8, 64), (None, None, 64),
                               lambda c: c.update(padding=[[2 ** 12, 0], [2 ** 12, 0]])),
    "zeropadding1d": (lambda L: L.ZeroPadding1D(1), (2, 1), (None, 1),
                      lambda c: c.update(padding=[10 ** 9, 0])),
    "repeatvector": (lambda L: L.RepeatVector(2), (3,), (3,), lambda c: c.update(n=10 ** 9)),
    "repeatvector-per-call": (lambda L: L.RepeatVector(2), (1024,), (1024,),
                              lambda c: c.update(n=2 ** 20)),
    "conv2dtranspose-strides": (lambda L: L.Conv2DTranspose(2, 2, strides=2), (2, 2, 1),
                                (None, None, 1), lambda c: c.update(strides=[BIG, BIG])),
    "conv2dtranspose-same-dilation": (lambda L: L.Conv2DTranspose(2, 2, padding="same"), (2, 2, 1),
                                      (None, None, 1), lambda c: c.update(dilation_rate=[BIG, BIG])),
    "conv2dtranspose-valid-dilation": (lambda L: L.Conv2DTranspose(2, 2), (2, 2, 1), (None, None, 1),
                                       lambda c: c.update(dilation_rate=[BIG, BIG])),
    "conv1dtranspose-strides": (lambda L: L.Conv1DTranspose(2, 2, strides=2), (2, 1), (None, 1),
                                lambda c: c.update(strides=[10 ** 9])),
    "conv3dtranspose-same-dilation": (lambda L: L.Conv3DTranspose(2, 2, padding="same"), (2, 2, 2, 1),
                                      (None, None, None, 1),
                                      lambda c: c.update(dilation_rate=[10 ** 4] * 3)),
    "maxpooling2d-same": (lambda L: L.MaxPooling2D(2, padding="same"), (2, 2, 1), (None, None, 1),
                          lambda c: c.update(pool_size=[BIG, BIG])),
    "maxpooling2d-same-per-call": (lambda L: L.MaxPooling2D(2, padding="same"), (8, 8, 64),
                                   (None, None, 64), lambda c: c.update(pool_size=[2 ** 12, 2 ** 12])),
    "averagepooling2d-same-s1": (lambda L: L.AveragePooling2D(2, strides=1, padding="same"), (2, 2, 1),
                                 (None, None, 1), lambda c: c.update(pool_size=[BIG, BIG])),
    "averagepooling1d-same": (lambda L: L.AveragePooling1D(2, padding="same"), (2, 1), (None, 1),
                              lambda c: c.update(pool_size=[10 ** 9])),
    # 'same'/'causal' padding with a huge dilation pads by (k-1)*d: ~8 GB for d = 10**9
    "conv1d-causal-dilation": (lambda L: L.Conv1D(2, 2, padding="causal"), (2, 1), (None, 1),
                               lambda c: c.update(dilation_rate=[10 ** 9])),
    "conv1d-same-dilation": (lambda L: L.Conv1D(2, 2, padding="same"), (2, 1), (None, 1),
                             lambda c: c.update(dilation_rate=[10 ** 9])),
    "conv2d-same-dilation": (lambda L: L.Conv2D(2, 2, padding="same"), (2, 2, 1), (None, None, 1),
                             lambda c: c.update(dilation_rate=[BIG, BIG])),
    "conv2d-grouped-same-dilation": (lambda L: L.Conv2D(4, 2, groups=2, padding="same"), (2, 2, 2),
                                     (None, None, 2), lambda c: c.update(dilation_rate=[BIG, BIG])),
    "depthwiseconv2d-same-dilation": (lambda L: L.DepthwiseConv2D(2, padding="same"), (2, 2, 1),
                                      (None, None, 1), lambda c: c.update(dilation_rate=[BIG, BIG])),
    "depthwiseconv1d-same-dilation": (lambda L: L.DepthwiseConv1D(2, padding="same"), (2, 1), (None, 1),
                                      lambda c: c.update(dilation_rate=[10 ** 9])),
    "separableconv2d-same-dilation": (lambda L: L.SeparableConv2D(2, 2, padding="same"), (2, 2, 1),
                                      (None, None, 1), lambda c: c.update(dilation_rate=[BIG, BIG])),
    "separableconv1d-same-dilation": (lambda L: L.SeparableConv1D(2, 2, padding="same"), (2, 1), (None, 1),
                                      lambda c: c.update(dilation_rate=[10 ** 9])),
    "convlstm2d-same-dilation": (lambda L: L.ConvLSTM2D(2, 2, padding="same"), (1, 2, 2, 1),
                                 (None, 2, 2, 1), lambda c: c.update(dilation_rate=[BIG, BIG])),
    "convlstm1d-same-dilation": (lambda L: L.ConvLSTM1D(2, 2, padding="same"), (1, 2, 1), (None, 2, 1),
                                 lambda c: c.update(dilation_rate=[10 ** 9])),
    "convlstm3d-same-dilation": (lambda L: L.ConvLSTM3D(2, 2, padding="same"), (1, 2, 2, 2, 1),
                                 (None, 2, 2, 2, 1), lambda c: c.update(dilation_rate=[10 ** 4] * 3)),
}


@pytest.mark.parametrize("case", HOSTILE)
@pytest.mark.parametrize("known", [True, False], ids=["fixed", "unknown"])
def test_hostile_sizes_refused_before_allocating(case, known, tmp_path):
    """load_model refuses the file with ModelFileError naming the cap; the traced peak
    stays under 64 MiB (the arrays asked for hold 2**30 to 10**18 values)."""
    factory, fixed, unknown, edit = HOSTILE[case]
    layer = factory(keras().layers)
    path = hostile_file(tmp_path, layer, fixed if known else unknown, edit)
    peak = refused_at_load(path)
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"
    with pytest.raises(ModelFileError, match=f"^{type(layer).__name__} layer '{layer.name}'"):
        scratch_layers.load_model(path)


# the cases whose config alone shows the excess: refused by the layer's constructor itself
BUILD_TIME = [c for c in HOSTILE if not c.endswith("per-call")]


@pytest.mark.parametrize("case", BUILD_TIME)
def test_config_alone_is_refused_when_the_layer_is_built(case, tmp_path):
    """The lower bound from the config is checked in the constructor: a model whose input
    never reaches the layer at load time is refused too."""
    import json
    import zipfile
    factory, fixed, _, edit = HOSTILE[case]
    with zipfile.ZipFile(hostile_file(tmp_path, factory(keras().layers), fixed, edit)) as z:
        cfg = json.loads(z.read("config.json"))["config"]["layers"][1]
    from scratch_layers.layers.registry import REGISTRY
    weights = []
    if "Transpose" in cfg["class_name"]:
        spatial = len(cfg["config"]["kernel_size"])
        weights = [np.zeros((2,) * spatial + (2, 1)), np.zeros(2)]
    elif "kernel_size" in cfg["config"]:  # the hostile layer's own weights, built by Keras
        layer = type(factory(keras().layers)).from_config(cfg["config"])
        layer.build((None,) + fixed)
        weights = [np.asarray(w) for w in layer.get_weights()]
    with pytest.raises(ModelFileError, match="MAX_SAMPLE_ELEMENTS"):
        REGISTRY[cfg["class_name"]](cfg["config"], weights)


def test_input_far_larger_than_built_for_is_refused_at_predict(tmp_path):
    """With unknown input sizes the cap applies to the real input at predict: an
    UpSampling2D(size=(128, 128)) model loads (its probe is small), and predict on a
    256x256 image (2**30 output values per sample) is a ModelFileError before allocating."""
    k = keras()
    path = tmp_path / "up.keras"
    k.Sequential([k.Input((None, None, 1)), k.layers.UpSampling2D((128, 128))]).save(path)
    sm = scratch_layers.load_model(path)
    np.testing.assert_array_equal(sm.predict(np.ones((1, 2, 2, 1))), np.ones((1, 256, 256, 1)))
    x = np.zeros((1, 256, 256, 1))
    peak = refusal_peak(lambda: sm.predict(x), "MAX_SAMPLE_ELEMENTS")
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


def test_bilinear_weights_are_capped():
    """UpSampling2D bilinear builds a dense (H*fh, H) matrix per axis: a tall input can make
    it exceed the cap while the output does not; refused before building it."""
    from scratch_layers.layers.reshaping import UpSampling2D
    layer = UpSampling2D({"name": "up", "size": [1, 1], "interpolation": "bilinear"}, [])
    h = 2 ** 15  # the matrix: 2**30 values; the output: 2**15
    peak = refusal_peak(lambda: layer.forward(np.zeros((1, h, 1, 1))), "bilinear weights")
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


@pytest.mark.parametrize("padding", [[[-1, 0], [0, 0]], [[1, 2, 3], [0, 0]], "x", [[1, 0]]])
def test_malformed_zero_padding2d_is_a_model_file_error(padding):
    """ZeroPadding2D's padding must be an int, two ints or two pairs of non-negative ints."""
    from scratch_layers.layers.reshaping import ZeroPadding2D
    with pytest.raises(ModelFileError, match="padding"):
        ZeroPadding2D({"name": "zp", "padding": padding}, [])


@pytest.mark.parametrize("factory,shape", [
    (lambda L: L.UpSampling2D((3, 2), interpolation="bilinear"), (4, 5, 2)),
    (lambda L: L.UpSampling1D(3), (4, 2)),
    (lambda L: L.ZeroPadding2D(((1, 2), (0, 3))), (4, 5, 2)),
    (lambda L: L.ZeroPadding2D((2, 1)), (4, 5, 2)),
    (lambda L: L.ZeroPadding1D((2, 1)), (4, 2)),
    (lambda L: L.MaxPooling2D(3, strides=2, padding="same"), (5, 6, 2)),
    (lambda L: L.AveragePooling1D(3, strides=2, padding="same"), (7, 2)),
    (lambda L: L.Conv2DTranspose(2, 3, strides=2, padding="same"), (4, 5, 2)),
    (lambda L: L.Conv1DTranspose(2, 3, dilation_rate=2, padding="same"), (5, 2)),
    (lambda L: L.RepeatVector(3), (4,)),
    (lambda L: L.Conv1D(3, 3, padding="causal", dilation_rate=2), (7, 2)),
    (lambda L: L.Conv1D(3, 2, padding="same", dilation_rate=3), (7, 2)),
    (lambda L: L.Conv2D(3, (3, 2), padding="same", dilation_rate=(2, 3)), (6, 7, 2)),
    (lambda L: L.Conv2D(4, 3, groups=2, padding="same", dilation_rate=2), (6, 5, 2)),
    (lambda L: L.DepthwiseConv2D((2, 3), depth_multiplier=2, padding="same", dilation_rate=(3, 2)),
     (6, 7, 2)),
    (lambda L: L.DepthwiseConv1D(3, padding="same", dilation_rate=2), (7, 2)),
    (lambda L: L.SeparableConv2D(3, 2, padding="same", dilation_rate=2), (5, 6, 2)),
    (lambda L: L.SeparableConv1D(3, 3, depth_multiplier=2, padding="same", dilation_rate=2), (7, 2)),
    (lambda L: L.ConvLSTM2D(3, 2, padding="same", dilation_rate=2, return_sequences=True), (3, 4, 5, 2)),
    (lambda L: L.ConvLSTM1D(3, 3, padding="same", dilation_rate=2), (3, 6, 2)),
    (lambda L: L.ConvLSTM3D(2, 2, padding="same", dilation_rate=2), (2, 3, 4, 3, 2)),
    # 'same' pools wider than their input: some pool offsets read padding only (skipped)
    (lambda L: L.MaxPooling2D((5, 4), strides=1, padding="same"), (2, 3, 2)),
    (lambda L: L.AveragePooling2D((5, 4), strides=(1, 2), padding="same"), (2, 3, 2)),
    (lambda L: L.MaxPooling1D(7, strides=1, padding="same"), (3, 2)),
    (lambda L: L.AveragePooling1D(6, strides=4, padding="same"), (5, 2)),
], ids=["up2d-bilinear", "up1d", "zp2d-pairs", "zp2d-ints", "zp1d", "maxpool2d-same", "avgpool1d-same",
        "t2d-same", "t1d-same-dil", "repeatvector", "conv1d-causal-dil", "conv1d-same-dil",
        "conv2d-same-dil", "conv2d-grouped-same-dil", "dw2d-same-dil", "dw1d-same-dil", "sep2d-same-dil",
        "sep1d-same-dil", "convlstm2d-same-dil", "convlstm1d-same-dil", "convlstm3d-same-dil",
        "maxpool2d-wide", "avgpool2d-wide",
        "maxpool1d-wide", "avgpool1d-wide"])
def test_ordinary_configs_still_equal_keras(factory, shape, tmp_path):
    """The checks change nothing for ordinary configs (max |diff| vs Keras float32)."""
    from keras_factories import check_model
    k = keras()
    layers = [k.Input(shape), factory(k.layers)]
    x = np.random.default_rng(0).normal(0, 1, (3,) + shape).astype(np.float32)
    check_model(k.Sequential(layers), x, tmp_path)


# id -> (layer factory, fixed input shape, unknown input shape, config edit): the config's
# lower bound passes (a 1-cell input's padded size is at most the cap), the fixed input's
# real padded size (or output) does not. Fixed: refused at load by the probe; unknown
# sizes: loads, and predict on an input of the fixed shape is refused before allocating.
PER_CALL = {
    "conv1d-causal": (lambda L: L.Conv1D(1, 2, padding="causal"), (2, 1), (None, 1),
                      lambda c: c.update(dilation_rate=[2 ** 28 - 1])),
    "conv2d-same": (lambda L: L.Conv2D(1, 2, padding="same"), (8, 8, 1), (None, None, 1),
                    lambda c: c.update(dilation_rate=[2 ** 14 - 1] * 2)),
    "conv2d-output": (lambda L: L.Conv2D(2 ** 12, 1), (256, 257, 1), (None, None, 1), lambda c: None),
    # the depthwise tile buffer holds C*M = 1024 channels: 513**2 * 1024 > 2**28 >= 505**2 * 1024
    "conv2d-grouped-same": (lambda L: L.Conv2D(1024, 2, groups=2, padding="same"), (9, 9, 2),
                            (None, None, 2), lambda c: c.update(dilation_rate=[504, 504])),
    "depthwiseconv2d-same": (lambda L: L.DepthwiseConv2D(2, padding="same"), (8, 8, 1), (None, None, 1),
                             lambda c: c.update(dilation_rate=[2 ** 14 - 1] * 2)),
    "separableconv1d-same": (lambda L: L.SeparableConv1D(1, 2, padding="same"), (4, 1), (None, 1),
                             lambda c: c.update(dilation_rate=[2 ** 28 - 1])),
    "separableconv2d-output": (lambda L: L.SeparableConv2D(2 ** 12, 1), (256, 257, 1), (None, None, 1),
                               lambda c: None),
    # 128 frames of 2050**2 padded cells; one frame's (2049**2) passes the config bound
    "convlstm2d-same": (lambda L: L.ConvLSTM2D(1, 2, padding="same"), (128, 2, 2, 1), (None, 2, 2, 1),
                        lambda c: c.update(dilation_rate=[2 ** 11] * 2)),
}


def _layer_message(layer):
    return f"^{type(layer).__name__} layer '{layer.name}'.*MAX_SAMPLE_ELEMENTS"


@pytest.mark.parametrize("case", PER_CALL)
def test_padded_size_per_call_refused_at_load(case, tmp_path):
    """A fixed input shape: the load-time probe's real shape exceeds the cap, refused
    before the padded input is allocated (traced peak < 64 MiB, the arrays asked for hold
    over 2**28 values); the constructor alone accepts the config (it is not hostile for
    a 1-cell input)."""
    factory, fixed, _, edit = PER_CALL[case]
    layer = factory(keras().layers)
    path = hostile_file(tmp_path, layer, fixed, edit)
    peak = refused_at_load(path)
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"
    with pytest.raises(ModelFileError, match=_layer_message(layer)):
        scratch_layers.load_model(path)


@pytest.mark.parametrize("case", PER_CALL)
def test_padded_size_per_call_refused_at_predict(case, tmp_path):
    """Unknown input sizes: the model loads (its probe, one cell per unknown size, fits),
    and predict on an input of the fixed case's shape is refused before allocating."""
    factory, fixed, unknown, edit = PER_CALL[case]
    layer = factory(keras().layers)
    sm = scratch_layers.load_model(hostile_file(tmp_path, layer, unknown, edit))
    x = np.zeros((1,) + fixed)
    peak = refusal_peak(lambda: sm.predict(x), _layer_message(layer))
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


# ----------------------------------------------------------------------------- 'same' pooling time

def test_live_pool_offsets_are_the_offsets_that_read_a_real_cell():
    """pooling.live_offsets against its definition (some i < out with before <= a + i*s <
    before + size), for every pool size, stride and input size up to 9 in 'same' and
    'valid' geometry."""
    from scratch_layers.layers.conv import _out_and_pads
    from scratch_layers.layers.pooling import live_offsets
    for size in range(1, 10):
        for k in range(1, 10):
            for s in range(1, 10):
                for padding in ("same", "valid"):
                    out, before, _ = _out_and_pads(size, k, s, 1, padding)
                    if out <= 0:
                        continue
                    real = [a for a in range(k)
                            if any(before <= a + i * s < before + size for i in range(out))]
                    assert list(live_offsets(k, s, before, size, out)) == real, (size, k, s, padding)


HOSTILE_POOL = 2 ** 11  # 2**22 offsets per pool in 2-D (about 11 s of Python before the skip)


@pytest.mark.parametrize("layer", ["MaxPooling2D", "AveragePooling2D"])
def test_huge_same_pool_is_quick_and_equals_keras(layer, tmp_path):
    """A 'same' pool of 2048 x 2048 (padded input 4 million cells, under the cap) on a 3x2
    image: forward and backward skip the 2**22 pool offsets that read padding only, so
    predict and the gradients take well under 5 s of CPU (a guard against a hang, not a
    speed claim); the results still equal Keras: predict vs its float64 twin (<= 1e-12
    relative) and float32 (1e-5), gradients through the pool vs tf.GradientTape."""
    import time
    from backward_helpers import compare_gradients, twin_of
    from keras_factories import assert_close, randomize_weights
    k = keras()
    pool = getattr(k.layers, layer)(HOSTILE_POOL, strides=1, padding="same")
    model = k.Sequential([k.Input((3, 2, 2)), k.layers.Conv2D(3, 1), pool, k.layers.Flatten(),
                          k.layers.Dense(3, activation="softmax")])
    randomize_weights(model, 1)
    path = tmp_path / "pool.keras"
    model.save(path)
    x = np.random.default_rng(2).normal(0, 1, (4, 3, 2, 2)).astype(np.float32)
    y = np.array([0, 1, 2, 1])
    start = time.process_time()
    sm = scratch_layers.load_model(path)
    got = sm.predict(x)
    sm.loss_and_gradients(x, y)
    cpu = time.process_time() - start
    assert cpu < 5.0, f"{cpu:.1f} s of CPU"
    twin = twin_of(model).predict(x.astype(np.float64), verbose=0)
    assert np.abs(got - twin).max() <= 1e-12 * np.abs(twin).max(), np.abs(got - twin).max()
    worst32 = assert_close(got, model.predict(x, verbose=0), what="float32")
    g64, g32 = compare_gradients(model, sm, x, y)
    print(f"{layer} pool {HOSTILE_POOL}: {cpu:.2f} s CPU; predict vs twin "
          f"{np.abs(got - twin).max():.2e}, vs float32 {worst32:.2e}; gradients vs twin {g64:.2e}, "
          f"vs float32 {g32:.2e}")


# ----------------------------------------------------------------------------- operation nodes

def _op_model(k, fn, shape):
    x = k.Input(shape)
    return k.Model(x, fn(k.ops, x))


# id -> (the op applied to the input tensor, input shape): a (10**5, 1) float32 constant
# (about 0.6 MB of config) against a 10**5-wide input: 10**10 output values per sample
HOSTILE_OPS = {
    "multiply": (lambda o, x: x * np.ones((10 ** 5, 1), np.float32), (10 ** 5,)),
    "where": (lambda o, x: o.where(x > 0, x, np.zeros((10 ** 5, 1), np.float32)), (10 ** 5,)),
    "matmul": (lambda o, x: o.matmul(np.ones((10 ** 5, 1), np.float32), x), (1, 10 ** 5)),
}


@pytest.mark.parametrize("case", HOSTILE_OPS)
def test_op_broadcasting_against_a_huge_constant_is_refused(case, tmp_path):
    """Real Keras files: load refuses them (the probe's output shape exceeds the cap)
    before the output is allocated."""
    k = keras()
    fn, shape = HOSTILE_OPS[case]
    path = tmp_path / "op.keras"
    _op_model(k, fn, shape).save(path)
    peak = refused_at_load(path)
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


def test_arange_with_a_huge_stop_is_refused(tmp_path):
    """An Arange node (Keras writes one only when an argument is a tensor) whose constant
    stop is 10**12: refused at load, from the probe, before allocating 8 TB; also the
    op alone, and a float step of 1e-300."""
    import json
    import zipfile
    from scratch_layers.layers.operations import make_op
    k = keras()
    path = tmp_path / "ok.keras"
    _op_model(k, lambda o, x: x + 1.0, (1,)).save(path)
    hostile = tmp_path / "arange.keras"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(hostile, "w") as dst:
        for item in src.infolist():
            blob = src.read(item.filename)
            if item.filename == "config.json":
                cfg = json.loads(blob)
                node = cfg["config"]["layers"][1]
                node.update(class_name="Arange", registered_name="Arange")
                node["inbound_nodes"][0]["args"][1] = 10 ** 12
                blob = json.dumps(cfg).encode()
            dst.writestr(item, blob)
    peak = refused_at_load(hostile)
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"
    op = make_op("Arange", {"name": "arange"})
    for start, stop, step in [(np.zeros(()), 10 ** 12, None), (np.zeros(()), 1.0, 1e-300)]:
        with pytest.raises(ModelFileError, match="^Arange layer 'arange'.*MAX_SAMPLE_ELEMENTS"):
            op.compute(start, stop, step)
    np.testing.assert_array_equal(op.compute(np.array(2), 11, 3), np.arange(2, 11, 3))
    np.testing.assert_array_equal(op.compute(np.array(0.5), 2.0, 0.25), np.arange(0.5, 2.0, 0.25))


def test_clip_and_max_initial_constants_are_capped():
    """Config options that broadcast: Clip's x_min (a constant array) and Max's initial."""
    from scratch_layers.layers.operations import make_op
    column = {"class_name": "__numpy__", "config": {"value": [[0.0]] * 10 ** 5, "dtype": "float32"}}
    x = np.zeros((1, 10 ** 5))
    for op in (make_op("Clip", {"name": "clip", "x_min": column, "x_max": 1.0}),
               make_op("Max", {"name": "max", "axis": 0, "initial": [[0.0]] * 10 ** 5})):
        peak = refusal_peak(lambda: op.compute(x), "MAX_SAMPLE_ELEMENTS")
        assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


@pytest.mark.parametrize("case", [
    (lambda o, x: x * np.linspace(-1, 1, 3).astype(np.float32)[:, None], (3,)),
    (lambda o, x: o.where(x > 0, x, np.full((3, 1), 0.5, np.float32)), (3,)),
    (lambda o, x: o.matmul(np.arange(6, dtype=np.float32).reshape(2, 3), x), (3, 4)),
    (lambda o, x: o.maximum(x, o.transpose(x)), (3,)),
], ids=["const-column", "where-column", "matmul-const", "broadcast-transpose"])
def test_ordinary_op_broadcasting_still_equals_keras(case, tmp_path):
    """The op checks change nothing for ordinary broadcasting (a constant's axis landing on
    the batch axis included, with batches of 3 and 1, as Keras' shapes allow; the samples
    mix, so each batch is compared whole)."""
    from keras_factories import assert_close
    fn, shape = case
    model = _op_model(keras(), fn, shape)
    model.save(tmp_path / "op.keras")
    sm = scratch_layers.load_model(tmp_path / "op.keras")
    x = np.random.default_rng(0).normal(0, 1, (3,) + shape).astype(np.float32)
    for batch in (x, x[:1]):
        assert_close(sm.predict(batch, batch_size=len(batch)), model.predict(batch, verbose=0),
                     what=f"batch of {len(batch)}")
