"""Winograd F(m x m, 3 x 3) convolution (scratch_layers.layers.winograd) against the slow
reference convolution in tests/scratch_reference.py, and a model whose 3x3 convolutions
take the Winograd path against Keras float32 and Keras' float64 twin."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import twin_of  # noqa: E402
from keras_factories import assert_close, keras, randomize_weights  # noqa: E402
from scratch_reference import conv2d_ref, pool2d_ref  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers.layers import winograd  # noqa: E402
from scratch_layers.layers.conv import Conv2D, conv_geometry  # noqa: E402

pytestmark = pytest.mark.scratch

# (N, H, W, C, F, padding): odd and even sizes, partial tiles, an output smaller than a tile
SHAPES = [(2, 7, 9, 3, 5, "same"), (2, 8, 8, 4, 6, "valid"), (1, 5, 6, 2, 3, "valid"),
          (3, 3, 3, 4, 4, "same"), (2, 16, 12, 8, 7, "same"), (1, 3, 4, 2, 2, "valid")]


def _case(shape, dtype, seed=0):
    n, h, w, c, f, padding = shape
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    k = rng.standard_normal((3, 3, c, f))
    ho, wo, pads = conv_geometry(x.shape, k.shape, (1, 1), padding, (1, 1))
    return x.astype(dtype), k, padding, ho, wo, pads


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_winograd_equals_direct_convolution(shape, m):
    """float64: equal to the direct sum to rounding (1e-13 of the output scale); float32
    within 1e-5 of the output scale (F(4x4)'s constants amplify rounding more)."""
    x, k, padding, ho, wo, pads = _case(shape, np.float64)
    ref = conv2d_ref(x, k, (1, 1), padding)
    got = winograd.winograd_conv2d(x, winograd.transform_kernel(k, m, np.float64), m, pads, ho, wo)
    assert got.shape == ref.shape and got.dtype == np.float64
    assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
    got32 = winograd.winograd_conv2d(x.astype(np.float32), winograd.transform_kernel(k, m, np.float32),
                                     m, pads, ho, wo)
    assert got32.dtype == np.float32
    assert np.abs(got32 - ref).max() <= 1e-5 * np.abs(ref).max()


@pytest.mark.parametrize("m", winograd.TILE_SIZES)
def test_winograd_pooled_equals_pool_of_convolution(m):
    """The max pool taken inside the tiles equals max_pool(conv(x)), NaN-ignoring."""
    x, k, padding, ho, wo, pads = _case((3, 8, 8, 5, 4, "same"), np.float64, seed=1)
    assert winograd.pools_in_tiles(m, ho, wo, (2, 2), (2, 2))
    ref = pool2d_ref(conv2d_ref(x, k, (1, 1), padding), (2, 2), (2, 2), "valid", "max")
    got = winograd.winograd_conv2d(x, winograd.transform_kernel(k, m, np.float64), m, pads, ho, wo, pool=(2, 2))
    assert np.abs(got - ref).max() <= 1e-13 * np.abs(ref).max()
    one = winograd.winograd_conv2d(x, winograd.transform_kernel(k, m, np.float64), m, pads, ho, wo, pool=(1, 1))
    conv = conv2d_ref(x, k, (1, 1), padding)
    assert np.abs(one - conv).max() <= 1e-13 * np.abs(conv).max()  # a 1x1 pool is the convolution


def test_pools_in_tiles_refuses_windows_across_tiles():
    assert not winograd.pools_in_tiles(2, 8, 8, (3, 3), (3, 3))   # 3 does not divide m
    assert not winograd.pools_in_tiles(4, 6, 8, (2, 2), (2, 2))   # a partial tile
    assert not winograd.pools_in_tiles(2, 8, 8, (2, 2), (1, 1))   # overlapping windows


def test_tile_choice_counts_transform_points():
    """F(4x4) where it needs fewer transform points; a 3x3 output takes one 4x4 tile (36
    points) rather than four 2x2 tiles (64)."""
    assert winograd.choose_tile(16, 16) == 4
    assert winograd.choose_tile(3, 3) == 4
    assert winograd.choose_tile(2, 2) == 2


def test_winograd_needs_enough_tiles():
    """Tiny maps in small chunks (ResNet50's last stage) keep im2col."""
    conv = Conv2D({"name": "c", "filters": 64, "kernel_size": 3, "padding": "same"},
                  [np.zeros((3, 3, 64, 64)), np.zeros(64)])
    assert conv.winograd_tile(np.float32, 3, 3, 2) is None
    assert conv.winograd_tile(np.float32, 16, 16, 2) == 4


def _winograd_model(k, filters):
    """3x3 'same' convolutions with enough channels for the Winograd path, one followed by
    BatchNormalization and ReLU (absorbed), one by a 2x2 max pool (fused), one 'valid'."""
    inputs = k.Input((12, 10, 3))
    x = k.layers.Conv2D(filters, 3, padding="same", activation="relu")(inputs)  # im2col (3 channels)
    x = k.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = k.layers.BatchNormalization()(x)
    x = k.layers.ReLU()(x)
    x = k.layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
    x = k.layers.MaxPooling2D(2)(x)
    x = k.layers.Conv2D(filters, 3, padding="valid", activation="relu")(x)
    x = k.layers.GlobalAveragePooling2D()(x)
    return k.Model(inputs, k.layers.Dense(5, activation="softmax")(x))


def test_winograd_model_equals_keras_and_its_float64_twin(tmp_path):
    k = keras()
    filters = Conv2D.WINOGRAD_MIN_CHANNELS
    model = _winograd_model(k, filters)
    randomize_weights(model, seed=3)
    path = tmp_path / "winograd.keras"
    model.save(path)
    x = np.random.default_rng(4).normal(size=(40, 12, 10, 3)).astype("float32")
    sm = scratch_layers.load_model(path)
    convs = [s[0] for s in sm._plan if "Conv2D" in s[0].class_name]
    used = [getattr(c, "conv", c).winograd_tile(np.float32, 8, 8, len(x)) for c in convs]
    assert used[0] is None and all(m is not None for m in used[1:]), used
    got = sm.predict(x)
    twin = twin_of(model).predict(x.astype(np.float64), verbose=0)
    scale = np.abs(twin).max()
    assert np.abs(got - twin).max() <= 1e-9 * scale, np.abs(got - twin).max()
    assert_close(scratch_layers.load_model(path, dtype="float32").predict(x), model.predict(x, verbose=0),
                 what="float32")
