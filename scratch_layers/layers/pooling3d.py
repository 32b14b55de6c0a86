"""3-D pooling (channels_last): MaxPooling3D and AveragePooling3D, forward and backward,
as TensorFlow's MaxPool3D/AvgPool3D kernels compute them (TF 'same' padding, the extra
pad after; 'same' average pooling divides by the real cells of each window).

Forward is separable: a box maximum (sum) is the maximum (sum) along D, then H, then W,
so it loops over kd + kh + kw strided views, not kd*kh*kw, and never over cells.

Two facts of TensorFlow that Keras inherits:

* MaxPool3D and AvgPool3D have no float64 kernel, so Keras' float64 twin of a model with
  them cannot run; scratch computes them in float64 by the same maths.
* MaxPool3D's gradient (``MaxPool3DGrad`` on CPU) does not pick one maximal cell per
  window, as the 2-D MaxPoolGrad does: it gives the window's whole gradient to *every*
  cell within :data:`TF_MAX_POOL_3D_TIE` (1e-5) of the maximum. Reproduced here.
"""
import numpy as np

from ..errors import InputError
from .bounds import check_sample_elements
from .conv3d import SPATIAL, pad3d
from .layer import Layer, same_padding, valid_out
from .pooling import PoolingBackward, tf_max_floor

# TF's MaxPool3DGrad: a cell gets the window's gradient when |x - max| < this.
TF_MAX_POOL_3D_TIE = 1e-5


def pool3d_geometry(x_shape, pool, strides, padding):
    """``(out, pads)``: the output sizes (Do, Ho, Wo) and three (before, after) pads."""
    outs, pads = [], []
    for size, k, s in zip(x_shape[1:1 + SPATIAL], pool, strides):
        if padding == "same":
            out, before, after = same_padding(size, k, s)
        else:
            out, before, after = valid_out(size, k, s), 0, 0
        outs.append(out)
        pads.append((before, after))
    if min(outs) <= 0:
        raise InputError(f"input spatial size {tuple(x_shape[1:1 + SPATIAL])} is too small for "
                         f"pool size {tuple(pool)}")
    return tuple(outs), tuple(pads)


def _axis_slab(ndim, axis, offset, stride, out):
    index = [slice(None)] * ndim
    index[axis] = slice(offset, offset + (out - 1) * stride + 1, stride)
    return tuple(index)


def _real_cells(x_shape, pool, strides, pads, outs, dtype):
    """Real (non-pad) cells of each window, (Do, Ho, Wo, 1): the outer product of the
    per-axis counts min(start + k, size) - max(start, 0)."""
    count = np.ones((1,) * SPATIAL, dtype)
    for axis, (size, k, s, (before, _), out) in enumerate(zip(x_shape[1:1 + SPATIAL], pool, strides,
                                                            pads, outs)):
        starts = np.arange(out) * s - before
        per = (np.minimum(starts + k, size) - np.maximum(starts, 0)).astype(dtype)
        shape = [1] * SPATIAL
        shape[axis] = out
        count = count * per.reshape(shape)
    return count[..., None]


def pool3d(x, pool, strides, padding, mode):
    """Max ("max") or average ("avg") pooling of (N, D, H, W, C). Max pads with NaN and
    uses ``np.fmax`` (the pads never win; see :func:`~scratch_layers.layers.pooling.tf_max_floor`);
    average pads with 0 and divides by each window's real cells."""
    outs, pads = pool3d_geometry(x.shape, pool, strides, padding)
    y = pad3d(x, pads, np.nan if mode == "max" else 0.0)
    for axis, (k, s, out) in enumerate(zip(pool, strides, outs), start=1):
        acc = None
        for a in range(k):
            view = y[_axis_slab(y.ndim, axis, a, s, out)]
            if acc is None:
                acc = view.copy()
            elif mode == "max":
                np.fmax(acc, view, out=acc)
            else:
                acc += view
        y = acc
    if mode == "max":
        return tf_max_floor(y)
    if any(a or b for a, b in pads):
        y /= _real_cells(x.shape, pool, strides, pads, outs, y.dtype)
    else:
        y /= int(np.prod(pool))
    return y


def pool3d_backward(x, y, dy, pool, strides, padding, mode):
    """dL/dx of :func:`pool3d` (``y`` its output). Average: dy / real cells, then the
    adjoint of each axis' window sum in reverse order (W, H, D), k strided adds per axis.
    Max: TF's MaxPool3DGrad, every real cell of a window with |x - y| < 1e-5 gets the
    window's dy (one masked add per kernel offset; overlapping windows accumulate)."""
    outs, pads = pool3d_geometry(x.shape, pool, strides, padding)
    sizes = x.shape[1:1 + SPATIAL]
    unpad = (slice(None),) + tuple(slice(a, a + s) for s, (a, _) in zip(sizes, pads))
    if mode == "avg":
        g = dy / _real_cells(x.shape, pool, strides, pads, outs, dy.dtype)
        for axis in range(SPATIAL, 0, -1):
            k, s, out = pool[axis - 1], strides[axis - 1], outs[axis - 1]
            shape = list(g.shape)
            shape[axis] = sizes[axis - 1] + sum(pads[axis - 1])
            acc = np.zeros(shape, g.dtype)
            for a in range(k):
                acc[_axis_slab(acc.ndim, axis, a, s, out)] += g
            g = acc
        return g[unpad]
    xp = pad3d(x, pads, np.nan)
    dxp = np.zeros(xp.shape, dy.dtype)
    tie = xp.dtype.type(TF_MAX_POOL_3D_TIE)
    for offset in np.ndindex(*pool):
        slab = (slice(None),) + tuple(slice(a, a + (o - 1) * s + 1, s)
                                      for a, s, o in zip(offset, strides, outs))
        with np.errstate(invalid="ignore"):
            hit = np.abs(xp[slab] - y) < tie
        dxp[slab] += np.where(hit, dy, 0.0)
    return dxp[unpad]


class Pooling3D(PoolingBackward, Layer):
    """MaxPooling3D / AveragePooling3D (channels_last); strides default to pool_size.
    ``forward_train`` is the pooling layers' (blocks of samples on the worker threads)."""

    mode = "max"

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.padding = self.require("padding", ("valid", "same"), "valid")
        self.pool = self.sizes("pool_size", SPATIAL, 2)
        self.strides = self.pool if config.get("strides") is None else self.sizes("strides", SPATIAL, 1)

    def forward(self, x, mask=None):
        self.check_rank(x, SPATIAL + 2, "volume batch (N, D, H, W, C)")
        _, pads = pool3d_geometry(x.shape, self.pool, self.strides, self.padding)
        check_sample_elements(self, tuple(s + a + b for s, (a, b) in zip(x.shape[1:-1], pads))
                              + x.shape[-1:], "padded input")
        return pool3d(x, self.pool, self.strides, self.padding, self.mode)

    def backward(self, dy, need_dx=True):
        x, y = self._saved
        return pool3d_backward(x, y, dy, self.pool, self.strides, self.padding, self.mode), []


class MaxPooling3D(Pooling3D):
    mode = "max"


class AveragePooling3D(Pooling3D):
    mode = "avg"
