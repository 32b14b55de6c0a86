"""The pooled convolution on output pairs (few channels, a (ph, 2) max pool): equal to
max_pool(conv(x)) computed the slow, obvious way, and taken only where it pays."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from scratch_reference import conv2d_ref, pool2d_ref  # noqa: E402

from scratch_layers.layers.conv import Conv2D  # noqa: E402

pytestmark = pytest.mark.scratch


def _conv(kernel, padding):
    config = {"name": "c", "filters": kernel.shape[-1], "kernel_size": list(kernel.shape[:2]),
              "strides": [1, 1], "padding": padding, "dilation_rate": [1, 1], "use_bias": False,
              "activation": "linear", "data_format": "channels_last", "groups": 1}
    return Conv2D(config, [kernel])


# (N, H, W, C, kh, kw, F, padding, pool): odd sizes, 'valid' and 'same', 1- to 3-row pools
CASES = [(3, 8, 8, 3, 3, 3, 5, "same", (2, 2)), (2, 9, 10, 3, 3, 3, 4, "valid", (1, 2)),
         (2, 6, 12, 4, 2, 2, 3, "same", (3, 2)), (1, 7, 6, 1, 5, 5, 2, "valid", (3, 2)),
         (2, 4, 4, 9, 1, 1, 6, "same", (2, 2))]


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_output_pairs_equal_pool_of_convolution(case, dtype):
    n, h, w, c, kh, kw, f, padding, pool = case
    rng = np.random.default_rng(sum(case[:7]))
    x, k = rng.standard_normal((n, h, w, c)), rng.standard_normal((kh, kw, c, f))
    conv = _conv(k.astype(dtype), padding)
    assert conv.pairs_pay(pool)
    ref = pool2d_ref(conv2d_ref(x, k, (1, 1), padding), pool, pool, "valid", "max")
    got = conv.convolve_max_pooled(x.astype(dtype), pool, pool)
    assert got.shape == ref.shape and got.dtype == dtype
    tol = 1e-13 if dtype == np.float64 else 1e-5
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max()


def test_output_pairs_only_where_they_pay():
    k = np.ones((3, 3, 3, 4))
    assert _conv(k, "same").pairs_pay((2, 2))
    assert not _conv(k, "same").pairs_pay((2, 3))          # pool width 3: no pairs
    assert not _conv(np.ones((3, 3, 4, 4)), "same").pairs_pay((2, 2))  # 12-value patch rows
    assert not _conv(np.ones((5, 5, 3, 4)), "same").pairs_pay((2, 2))  # 15 values: no gain


def test_output_pairs_leave_nonfinite_inputs_to_im2col():
    """A pair's zero weights would turn a neighbour's inf or NaN into NaN (inf * 0): such
    blocks take the per-output patches, so the result is the im2col path's, bit for bit."""
    rng = np.random.default_rng(3)
    x, k = rng.standard_normal((2, 6, 6, 3)), rng.standard_normal((3, 3, 3, 4))
    x[0, 2, 3, 1] = np.nan
    x[1, 4, 1, 0] = np.inf
    conv = _conv(k, "same")
    got = conv.convolve_max_pooled(x, (2, 2), (2, 2))
    conv.PAIRS_MAX_PATCH_ROW = 0  # this instance only: the per-output patches
    ref = conv.convolve_max_pooled(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(got, ref)
