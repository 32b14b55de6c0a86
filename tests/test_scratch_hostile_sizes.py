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

The 3-D layers' and the preprocessing layers' caps have their own tests
(test_scratch_3d.py, the Resizing/CategoryEncoding/Hashing tests); the model-file
hostility (zip, h5, JSON) is test_scratch_hostile.py's.
"""
import os
import sys
import tracemalloc

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras  # noqa: E402
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
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="MAX_SAMPLE_ELEMENTS"):
            sm.predict(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"peak {peak / 2 ** 20:.1f} MiB"


def test_bilinear_weights_are_capped():
    """UpSampling2D bilinear builds a dense (H*fh, H) matrix per axis: a tall input can make
    it exceed the cap while the output does not; refused before building it."""
    from scratch_layers.layers.reshaping import UpSampling2D
    layer = UpSampling2D({"name": "up", "size": [1, 1], "interpolation": "bilinear"}, [])
    h = 2 ** 15  # the matrix: 2**30 values; the output: 2**15
    tracemalloc.start()
    try:
        with pytest.raises(ModelFileError, match="bilinear weights"):
            layer.forward(np.zeros((1, h, 1, 1)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
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
], ids=["up2d-bilinear", "up1d", "zp2d-pairs", "zp2d-ints", "zp1d", "maxpool2d-same", "avgpool1d-same",
        "t2d-same", "t1d-same-dil", "repeatvector"])
def test_ordinary_configs_still_equal_keras(factory, shape, tmp_path):
    """The checks change nothing for ordinary configs (max |diff| vs Keras float32)."""
    from keras_factories import check_model
    k = keras()
    layers = [k.Input(shape), factory(k.layers)]
    x = np.random.default_rng(0).normal(0, 1, (3,) + shape).astype(np.float32)
    check_model(k.Sequential(layers), x, tmp_path)
