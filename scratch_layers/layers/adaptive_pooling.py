"""Adaptive pooling (channels_last): AdaptiveAveragePooling1D/2D/3D and
AdaptiveMaxPooling1D/2D/3D, forward and backward, with Keras' bins exactly.

Keras' TensorFlow backend (``keras/src/backend/tensorflow/nn.py``,
``_adaptive_{average,max}_pool{1,2,3}d``) pools one spatial axis at a time (D, then H,
then W). Along an axis of length L pooled to O cells (:func:`adaptive_windows`):

* ``small = ceil(L / O)``, ``big = small + 1``;
* ``start_i = floor(float32(i) * float32(L) / float32(O))`` and
  ``end_i = ceil(float32(i + 1) * float32(L) / float32(O))``, in float32 as TF computes
  them, then ``end_i = min(end_i, L)``, ``start_i = min(start_i, L - 1)``;
* window i is ``[start_i, start_i + n_i)`` with ``n_i = big`` where ``end_i - start_i == big``,
  else ``small`` (Keras pools every window of both sizes and gathers these). Neighbouring
  windows may overlap.

Average: each window's sum divided by n_i. Max: its maximum (NaN ignored, as TF's max
pooling; see :func:`~scratch_layers.layers.pooling.tf_max_floor`). Each axis pass gathers
the windows as one (O, big) index array (``np.take``, short windows repeat their last
cell) and reduces it: no loop over cells or samples.

Backward, the adjoint of each pass in reverse order (W, H, D), scatter-added with
``np.add.at``: average sends dy / n_i to every cell of the window; max sends a window's
dy to its first maximal cell in 1-D and 2-D (TF's MaxPoolGrad) and, in 3-D, to every cell
within 1e-5 of the maximum (TF's MaxPool3DGrad: the 3-D layers pool with 3-D windows such
as (small, 1, 1); see :mod:`~scratch_layers.layers.pooling3d`). TF has no float64 3-D
pooling kernel, so Keras' float64 twin of the 3-D layers cannot run.
"""
import math

import numpy as np

from ..errors import InputError
from .bounds import check_sample_elements
from .layer import Layer
from .pooling import tf_max_floor
from .pooling3d import TF_MAX_POOL_3D_TIE


def adaptive_windows(size, out):
    """``(starts, lengths)`` (int64 arrays of length ``out``) of Keras' adaptive pooling
    windows along an axis of length ``size`` (see the module docstring)."""
    small = math.ceil(size / out)
    big = small + 1
    f32 = np.float32
    starts = np.floor(np.arange(out, dtype=f32) * f32(size) / f32(out)).astype(np.int64)
    ends = np.ceil(np.arange(1, out + 1, dtype=f32) * f32(size) / f32(out)).astype(np.int64)
    ends = np.minimum(ends, size)
    starts = np.minimum(starts, size - 1)
    lengths = np.where(ends - starts == big, big, small)
    if np.any(starts + lengths > size):  # Keras' gather would index past its pooled rows too
        raise InputError(f"adaptive pooling of length {size} to {out} cells reads past the input")
    return starts, lengths


def _plan(size, out):
    """Gather indices (O, big) (a short window repeats its last cell), validity mask
    (O, big) and lengths (O,) of one axis."""
    starts, lengths = adaptive_windows(size, out)
    j = np.arange(int(lengths.max()))
    idx = starts[:, None] + np.minimum(j, lengths[:, None] - 1)
    return idx, j < lengths[:, None], lengths


def _axis_shape(ndim, axis, *sizes):
    """A broadcast shape with ``sizes`` at axes axis, axis + 1, ... and 1 elsewhere."""
    shape = [1] * ndim
    shape[axis:axis + len(sizes)] = sizes
    return shape


def pool_axis(x, axis, out, mode):
    """One pass: ``x`` pooled to ``out`` cells along ``axis``. Returns ``(y, windows)``,
    ``windows`` the gathered (..., O, big, ...) values (the backward pass reads them)."""
    idx, valid, lengths = _plan(x.shape[axis], out)
    windows = np.take(x, idx, axis=axis)
    if mode == "max":
        return np.fmax.reduce(windows, axis=axis + 1), windows
    mask = valid.reshape(_axis_shape(windows.ndim, axis, *valid.shape))
    total = np.where(mask, windows, 0.0).sum(axis=axis + 1)
    return total / lengths.reshape(_axis_shape(total.ndim, axis, len(lengths))).astype(x.dtype), windows


def pool_axis_backward(x_shape, axis, windows, y, dy, mode, tie=None):
    """dL/dx of :func:`pool_axis` (``y`` its output, ``dy`` dL/dy). Max: the first maximal
    cell of each window (``tie`` None) or every cell with |x - max| < ``tie``."""
    idx, valid, lengths = _plan(x_shape[axis], y.shape[axis])
    o, big = idx.shape
    mask = valid.reshape(_axis_shape(windows.ndim, axis, o, big))
    dy_w = np.expand_dims(dy, axis + 1)
    if mode == "avg":
        per = dy_w / lengths.reshape(_axis_shape(windows.ndim, axis, o, 1)).astype(dy.dtype)
        contrib = np.where(mask, per, 0.0)
    else:
        y_w = np.expand_dims(y, axis + 1)
        if tie is None:
            hit = (windows == y_w) & mask
            hit &= np.cumsum(hit, axis=axis + 1) == 1  # the first one only
        else:
            with np.errstate(invalid="ignore"):
                hit = (np.abs(windows - y_w) < windows.dtype.type(tie)) & mask
        contrib = np.where(hit, dy_w, 0.0)
    dx = np.zeros(x_shape, dy.dtype)
    rows = np.moveaxis(contrib, (axis, axis + 1), (0, 1))
    np.add.at(np.moveaxis(dx, axis, 0), idx.ravel(), rows.reshape((o * big,) + rows.shape[2:]))
    return dx


class AdaptivePooling(Layer):
    """Adaptive{Average,Max}Pooling{1,2,3}D on (N, *spatial, C): ``output_size`` cells per
    spatial axis, whatever the input's size."""

    mode = "avg"
    spatial = 2

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.output_size = self.sizes("output_size", self.spatial, config["output_size"])
        check_sample_elements(self, self.output_size)
        # 3-D max pooling runs TF's MaxPool3D, whose gradient has the 1e-5 tie rule
        self.tie = TF_MAX_POOL_3D_TIE if self.spatial == 3 and self.mode == "max" else None

    def _passes(self, x):
        self.check_rank(x, self.spatial + 2)
        check_sample_elements(self, self.output_size + x.shape[-1:])
        return list(enumerate(self.output_size, start=1))

    def forward(self, x, mask=None):
        for axis, out in self._passes(x):
            x = pool_axis(x, axis, out, self.mode)[0]
        return tf_max_floor(x) if self.mode == "max" else x

    def forward_train(self, x, mask, ctx):
        saved = []
        for axis, out in self._passes(x):
            y, windows = pool_axis(x, axis, out, self.mode)
            saved.append((x.shape, axis, windows, y))
            x = y
        self._saved = saved
        return tf_max_floor(x) if self.mode == "max" else x

    def backward(self, dy, need_dx=True):
        for x_shape, axis, windows, y in reversed(self._saved):
            dy = pool_axis_backward(x_shape, axis, windows, y, dy, self.mode, self.tie)
        return dy, []


def _adaptive(mode, spatial):
    name = f"Adaptive{'Average' if mode == 'avg' else 'Max'}Pooling{spatial}D"
    return type(name, (AdaptivePooling,), {"mode": mode, "spatial": spatial})


AdaptiveAveragePooling1D = _adaptive("avg", 1)
AdaptiveAveragePooling2D = _adaptive("avg", 2)
AdaptiveAveragePooling3D = _adaptive("avg", 3)
AdaptiveMaxPooling1D = _adaptive("max", 1)
AdaptiveMaxPooling2D = _adaptive("max", 2)
AdaptiveMaxPooling3D = _adaptive("max", 3)
