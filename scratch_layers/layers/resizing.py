"""``Resizing`` and ``CenterCrop``: TensorFlow's ``tf.image.resize`` as Keras 3 calls it
(``keras/src/backend/tensorflow/image.py::resize``: half-pixel centers, ``antialias`` off
unless the config sets it), re-implemented without TensorFlow.

Every method Keras offers is separable: one resampling operator per spatial axis,
``y[n, o, p, c] = sum_{h, w} A_h[o, h] A_w[p, w] x[n, h, w, c]``. Each operator is held
as TensorFlow holds it, sparse (:class:`Resample1D`: for each output cell a few input
indices and their weights), and applied as one gather and multiply-add per tap, vectorised
over the batch, the other axis and the channels. The weights are computed as TF's kernels
compute them, in float32 (positions, spans, the bicubic table, the normalisation), and kept
as float64 numbers; the interpolation itself runs in the compute dtype.

TF's kernels for every method but nearest (``ResizeBilinear``, ``ResizeBicubic``,
``ResizeArea``, ``ScaleAndTranslate``) interpolate in float32 even on float64 input, so
Keras' float64 twin is only float32-accurate there; scratch's float64 result is TF's
formula evaluated in float64. Nearest copies pixels and is exact in both.
"""
import functools

import numpy as np

from ..errors import ModelFileError
from .bounds import check_sample_elements
from .layer import Layer

F32 = np.float32
RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area", "lanczos3", "lanczos5")
# the kernel ScaleAndTranslate uses for each method that goes through it
# (tf.image.resize: lanczos always, bilinear and bicubic only with antialias)
_SCALE_AND_TRANSLATE = {"lanczos3": "lanczos3", "lanczos5": "lanczos5",
                        "bilinear": "triangle", "bicubic": "keyscubic"}
_KEYS_TABLE_SIZE = 1024        # resize_bicubic_op.cc: kTableSize
_FLT_MIN = np.finfo(np.float32).tiny


class Resample1D:
    """A resampling operator along one axis: ``out[o] = sum_k weights[o, k] in[index[o, k]]``.

    ``index`` (out, span) int64 and ``weights`` (out, span) float64 (the float32 values TF
    computes; unused taps have weight 0); ``in_size`` the length of the axis it reads."""

    def __init__(self, index, weights, in_size):
        self.index = np.ascontiguousarray(index, dtype=np.int64)
        self.weights = np.ascontiguousarray(weights, dtype=np.float64)
        self.in_size = int(in_size)
        self._cast = {}

    @property
    def out_size(self):
        return self.index.shape[0]

    def weights_as(self, dtype):
        key = np.dtype(dtype).str
        if key not in self._cast:
            self._cast[key] = self.weights.astype(dtype)
        return self._cast[key]

    def apply(self, x, axis):
        """The operator along ``axis`` of ``x``: one gather and multiply-add per tap."""
        w = self.weights_as(x.dtype)
        shape = [1] * x.ndim
        shape[axis] = self.out_size
        out = None
        for k in range(self.index.shape[1]):
            if not w[:, k].any():
                continue
            term = np.take(x, self.index[:, k], axis=axis)
            term *= w[:, k].reshape(shape)
            if out is None:
                out = term
            else:
                out += term
        if out is None:
            shape = list(x.shape)
            shape[axis] = self.out_size
            out = np.zeros(shape, dtype=x.dtype)
        return out

    def transpose(self):
        """The adjoint, also as a gather: for each input cell, the output cells that read it
        and their weights (TF's ``ComputeGradSpansCore``, without its float32 sum)."""
        rows, taps = np.nonzero(self.weights)
        src = self.index[rows, taps]
        order = np.argsort(src, kind="stable")
        src, rows, w = src[order], rows[order], self.weights[rows, taps][order]
        counts = np.bincount(src, minlength=self.in_size)
        span = max(int(counts.max(initial=0)), 1)
        pos = np.arange(len(src)) - (np.cumsum(counts) - counts)[src]
        index = np.zeros((self.in_size, span), np.int64)
        weights = np.zeros((self.in_size, span))
        index[src, pos] = rows
        weights[src, pos] = w
        return Resample1D(index, weights, self.out_size)

    def dense(self):
        """The (out, in) matrix."""
        a = np.zeros((self.out_size, self.in_size))
        rows = np.repeat(np.arange(self.out_size), self.index.shape[1])
        np.add.at(a, (rows, self.index.ravel()), self.weights.ravel())
        return a


# ----------------------------------------------------------------------------- weights
# One function per TF kernel; ``in_size``/``out_size`` > 0. Arithmetic is float32 exactly
# where the C++ is float (``F32``), float64 where it is double.

def _positions(out_size):
    """``static_cast<float>(x)`` for x = 0 .. out_size - 1."""
    return np.arange(out_size).astype(F32)


def _resize_scale(in_size, out_size):
    """image_resizer_state.h ``CalculateResizeScale`` (align_corners=False): in / out in float32."""
    return F32(in_size) / F32(out_size)


def _bilinear(in_size, out_size):
    """``ResizeBilinear`` (half_pixel_centers): t = (o + 0.5) scale - 0.5, lo = max(floor t, 0),
    hi = min(ceil t, in - 1), weights 1 - (t - floor t) and t - floor t."""
    t = (_positions(out_size) + F32(0.5)) * _resize_scale(in_size, out_size) - F32(0.5)
    floor = np.floor(t)
    lerp = (t - floor).astype(np.float64)
    lo = np.maximum(floor.astype(np.int64), 0)
    hi = np.minimum(np.ceil(t).astype(np.int64), in_size - 1)
    return np.stack([lo, hi], 1), np.stack([1.0 - lerp, lerp], 1)


def _nearest(in_size, out_size):
    """``ResizeNearestNeighbor`` (half_pixel_centers): i = clip(floor((o + 0.5) scale), 0, in - 1)."""
    v = np.floor((_positions(out_size) + F32(0.5)) * _resize_scale(in_size, out_size))
    v = np.maximum(np.minimum(v.astype(np.int64), in_size - 1), 0)
    return v[:, None], np.ones((out_size, 1))


@functools.lru_cache(maxsize=1)
def _keys_cubic_table():
    """resize_bicubic_op.cc ``InitCoeffsTable(-0.5)``: float32 coefficients of Keys' cubic
    (a = -0.5) at x = i / 1024 (column 0) and x + 1 (column 1), computed in double."""
    a = -0.5
    x = (np.arange(_KEYS_TABLE_SIZE + 1) * 1.0 / _KEYS_TABLE_SIZE).astype(F32).astype(np.float64)
    near = (((a + 2) * x - (a + 3)) * x * x + 1).astype(F32)
    x = x + 1.0
    far = (((a * x - 5 * a) * x + 8 * a) * x - 4 * a).astype(F32)
    return np.stack([near, far], 1)


def _normalise_f32(weights):
    """Divide each row by its float32 sum, summed left to right as TF does; rows whose
    |sum| < 1000 FLT_MIN are left as TF leaves them (bicubic: unnormalised; spans: zero)."""
    total = np.zeros(weights.shape[0], F32)
    for k in range(weights.shape[1]):
        total = total + weights[:, k]
    ok = np.abs(total) >= F32(1000.0) * F32(_FLT_MIN)
    inv = np.where(ok, F32(1.0) / np.where(ok, total, F32(1.0)), F32(1.0)).astype(F32)
    return weights * inv[:, None], ok


def _bicubic(in_size, out_size):
    """``ResizeBicubic`` (half_pixel_centers, Keys' a = -0.5): t = (o + 0.5) scale - 0.5,
    l = floor t, the fraction quantised to 1/1024 (``lrintf``), table weights for cells
    l - 1 .. l + 2; a cell outside the image gets weight 0 and the four are renormalised."""
    t = (_positions(out_size) + F32(0.5)) * _resize_scale(in_size, out_size) - F32(0.5)
    loc = np.floor(t).astype(np.int64)
    delta = t - loc.astype(F32)
    offset = np.rint(delta * F32(_KEYS_TABLE_SIZE)).astype(np.int64)
    table = _keys_cubic_table()
    coeffs = np.stack([table[offset, 1], table[offset, 0],
                       table[_KEYS_TABLE_SIZE - offset, 0], table[_KEYS_TABLE_SIZE - offset, 1]], 1)
    cells = loc[:, None] + np.arange(-1, 3)
    inside = (cells >= 0) & (cells < in_size)
    weights, _ = _normalise_f32(np.where(inside, coeffs, F32(0.0)).astype(F32))
    return np.clip(cells, 0, in_size - 1), weights.astype(np.float64)


def _area(in_size, out_size):
    """``ResizeArea``: output cell o covers [o s, (o + 1) s) of the input (s = in / out);
    each input cell i in [floor(o s), ceil((o + 1) s)) weighs the length of its overlap,
    computed in float32 as resize_area_op.cc does (indices clamped into the image). The
    2-D kernel's final factor 1 / (s_h s_w) is applied by :func:`resize_operators`."""
    scale = _resize_scale(in_size, out_size)
    lo = _positions(out_size) * scale
    hi = np.arange(1, out_size + 1).astype(F32) * scale
    start = np.floor(lo).astype(np.int64)
    end = np.ceil(hi).astype(np.int64)
    span = int((end - start).max())
    cells = start[:, None] + np.arange(span)
    c, c1 = cells.astype(F32), (cells + 1).astype(F32)
    lo, hi = lo[:, None], hi[:, None]
    w = np.where(c < lo, np.where(c1 > hi, scale, c1 - lo), np.where(c1 > hi, hi - c, F32(1.0)))
    w = np.where(cells < end[:, None], w, F32(0.0)).astype(np.float64)
    return np.clip(cells, 0, in_size - 1), w


def _kernel(name, x):
    """sampling_kernels.h, in float32, at |x|."""
    x = np.abs(x)
    if name == "triangle":
        return np.where(x < F32(1.0), F32(1.0) - x, F32(0.0)).astype(F32)
    if name == "keyscubic":
        far = ((F32(-0.5) * x + F32(2.5)) * x - F32(4.0)) * x + F32(2.0)
        near = ((F32(1.5) * x - F32(2.5)) * x) * x + F32(1.0)
        return np.where(x >= F32(2.0), F32(0.0), np.where(x >= F32(1.0), far, near)).astype(F32)
    radius = F32(3.0 if name == "lanczos3" else 5.0)
    pi = F32(3.14159265359)
    with np.errstate(invalid="ignore", divide="ignore"):
        value = radius * np.sin(pi * x) * np.sin(pi * x / radius) / (pi * pi * x * x)
    return np.where(x > radius, F32(0.0), np.where(x.astype(np.float64) <= 1e-3, F32(1.0), value)).astype(F32)


_RADIUS = {"triangle": 1.0, "keyscubic": 2.0, "lanczos3": 3.0, "lanczos5": 5.0}


def _scale_and_translate(kernel, in_size, out_size, antialias):
    """``ScaleAndTranslate`` (scale_and_translate_op.cc ``ComputeSpansCore``, translation 0):
    sample point s = (o + 0.5) / scale with scale = out / in; with ``antialias`` the kernel
    is widened by max(1 / scale, 1) (downsampling low-passes); the kernel's taps over the
    cells within its radius of s - 0.5 are normalised to sum 1 in float32."""
    scale = F32(out_size) / F32(in_size)
    inv_scale = F32(1.0 / np.float64(scale))
    kernel_scale = max(inv_scale, F32(1.0)) if antialias else F32(1.0)
    reach = F32(_RADIUS[kernel]) * kernel_scale
    span = min(2 * int(np.ceil(reach)) + 1, in_size)
    sample = (_positions(out_size) + F32(0.5)) * inv_scale
    start = np.clip(np.ceil(sample - reach - F32(0.5)).astype(np.int64), 0, in_size - 1)
    end = np.clip(np.floor(sample + reach - F32(0.5)).astype(np.int64), 0, in_size - 1) + 1
    cells = start[:, None] + np.arange(span)
    pos = cells.astype(F32) + F32(0.5) - sample[:, None]
    w = _kernel(kernel, pos * (F32(1.0) / kernel_scale))
    w = np.where(cells < end[:, None], w, F32(0.0)).astype(F32)
    w, ok = _normalise_f32(w)
    outside = (sample < 0) | (sample > in_size)
    w[~ok | outside] = 0.0
    return np.clip(cells, 0, in_size - 1), w.astype(np.float64)


def span_bound(method, in_size, out_size, antialias=False):
    """An upper bound on the taps per output cell of :func:`axis_operator`, from the sizes
    alone (checked against the cap before an operator is built)."""
    if method in _SCALE_AND_TRANSLATE and (antialias or method.startswith("lanczos")):
        reach = _RADIUS[_SCALE_AND_TRANSLATE[method]] * (max(in_size / out_size, 1.0) if antialias else 1.0)
        return min(2 * int(np.ceil(reach)) + 3, in_size)
    if method == "area":
        return int(np.ceil(in_size / out_size)) + 2
    return {"nearest": 1, "bilinear": 2, "bicubic": 4}[method]


def axis_operator(method, in_size, out_size, antialias=False):
    """The :class:`Resample1D` of ``tf.image.resize(method, antialias)`` along one axis."""
    if method in _SCALE_AND_TRANSLATE and (antialias or method.startswith("lanczos")):
        index, weights = _scale_and_translate(_SCALE_AND_TRANSLATE[method], in_size, out_size, antialias)
    else:
        index, weights = {"bilinear": _bilinear, "nearest": _nearest, "bicubic": _bicubic,
                          "area": _area}[method](in_size, out_size)
    return Resample1D(index, weights, in_size)


@functools.lru_cache(maxsize=32)
def resize_operators(in_hw, out_hw, method, antialias=False):
    """``(A_h, A_w)`` for resizing (in_h, in_w) images to (out_h, out_w); area's overall
    factor ``1 / (s_h s_w)`` (float32, as resize_area_op.cc) is folded into A_h."""
    a_h = axis_operator(method, in_hw[0], out_hw[0], antialias)
    a_w = axis_operator(method, in_hw[1], out_hw[1], antialias)
    if method == "area":
        s = _resize_scale(in_hw[0], out_hw[0]) * _resize_scale(in_hw[1], out_hw[1])
        a_h = Resample1D(a_h.index, a_h.weights * float(F32(1.0 / np.float64(s))), a_h.in_size)
    return a_h, a_w


def resize(x, out_hw, method, antialias=False):
    """``tf.image.resize(x, out_hw, method, antialias)`` on (N, H, W, C) ``x``."""
    a_h, a_w = resize_operators(tuple(x.shape[1:3]), tuple(out_hw), method, bool(antialias))
    return a_w.apply(a_h.apply(x, 1), 2)


def resize_backward(dy, in_hw, method, antialias=False):
    """The gradient of :func:`resize` for (N, H, W, C) input of spatial size ``in_hw``:
    A_h^T dy A_w (the adjoint operators, as gathers)."""
    a_h, a_w = resize_operators(tuple(in_hw), tuple(dy.shape[1:3]), method, bool(antialias))
    return _transposed(a_w).apply(_transposed(a_h).apply(dy, 1), 2)


@functools.lru_cache(maxsize=64)
def _transposed(op):
    return op.transpose()


# ----------------------------------------------------------------------------- geometry

class Window:
    """Where a resize reads its image: ``crop`` (top, height, left, width) of the input, or
    ``pad`` (top, left) cells of fill on each side (Keras pads both sides equally)."""

    def __init__(self, crop=None, pad=None):
        self.crop, self.pad = crop, pad

    def take(self, x, fill):
        if self.crop is not None:
            t, h, l, w = self.crop
            return x[:, t:t + h, l:l + w]
        if self.pad is not None and any(self.pad):
            t, l = self.pad
            n, h, w, c = x.shape
            out = np.full((n, h + 2 * t, w + 2 * l, c), fill, dtype=x.dtype)
            out[:, t:t + h, l:l + w] = x
            return out
        return x

    def region(self, hw):
        """The spatial size of what :meth:`take` returns for an input of size ``hw``."""
        if self.crop is not None:
            return self.crop[1], self.crop[3]
        if self.pad is not None:
            return hw[0] + 2 * self.pad[0], hw[1] + 2 * self.pad[1]
        return tuple(hw)

    def adjoint(self, g, in_shape):
        """The gradient w.r.t. the input from ``g``, the gradient w.r.t. ``take``'s output."""
        if self.crop is not None:
            t, h, l, w = self.crop
            dx = np.zeros(in_shape, dtype=g.dtype)
            dx[:, t:t + h, l:l + w] = g
            return dx
        if self.pad is not None and any(self.pad):
            t, l = self.pad
            return g[:, t:t + in_shape[1], l:l + in_shape[2]]
        return g


def tf_aspect_window(hw, target, mode):
    """keras/src/backend/tensorflow/image.py ``resize``'s crop_to_aspect_ratio /
    pad_to_aspect_ratio, whose sizes are float32 tensor arithmetic truncated to int32:
    crop/pad height = int(float32(W th) / tw), width = int(float32(H tw) / th); the crop
    is clamped into [1, H] x [1, W] and centred with int(float32(H - ch) / 2); the pad
    adds int(float32(ph - H) / 2) cells of fill on both sides."""
    (h, w), (th, tw) = hw, target
    along_h = int(F32(w * th) / F32(tw))
    along_w = int(F32(h * tw) / F32(th))
    if mode == "crop":
        ch, cw = max(min(h, along_h), 1), max(min(w, along_w), 1)
        return Window(crop=(int(F32(h - ch) / F32(2)), ch, int(F32(w - cw) / F32(2)), cw))
    ph, pw = max(h, along_h), max(w, along_w)
    return Window(pad=(int(F32(ph - h) / F32(2)), int(F32(pw - w) / F32(2))))


def smart_resize_window(hw, target):
    """keras/src/utils/image_utils.py ``smart_resize`` with static sizes (Python floats):
    the largest centred crop of the target's aspect ratio."""
    (h, w), (th, tw) = hw, target
    ch = max(min(h, int(float(w * th) / tw)), 1)
    cw = max(min(w, int(float(h * tw) / th)), 1)
    return Window(crop=(int(float(h - ch) / 2), ch, int(float(w - cw) / 2), cw))


# ----------------------------------------------------------------------------- layers

class _ImageLayer(Layer):
    """Shared by Resizing and CenterCrop: channels_last, a positive target size checked
    against the cap on one sample's values before anything is allocated."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.target = tuple(self._size(k) for k in ("height", "width"))
        check_sample_elements(self, self.target)

    def _size(self, key):
        v = self.config[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ModelFileError(f"{self.class_name} layer '{self.name}': {key}={str(v)[:40]} is "
                                 "not a positive integer; the file was not written by Keras or is corrupt")
        return v

    def _check(self, x):
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        check_sample_elements(self, self.target + (x.shape[3],))

    def _check_work(self, hw, channels, window, method):
        """Everything a call allocates besides input and output, against the cap on one
        sample's values, before it is allocated: the padded image (a target of extreme
        aspect ratio pads a small image enormously), the row pass (out_h, w, C) and its
        transpose in the backward (h, out_w, C), and the resampling weights."""
        (h, w), (th, tw) = window.region(hw), self.target
        check_sample_elements(self, (h, w, channels), "padded image")
        if method is None:
            return
        check_sample_elements(self, (th, w, channels), "row pass")
        check_sample_elements(self, (h, tw, channels), "row pass of the gradient")
        for n_in, n_out in ((h, th), (w, tw)):
            check_sample_elements(self, (n_out, span_bound(method, n_in, n_out, self.antialias)),
                                  "resampling weights")

    def plan(self, hw):
        """``(window, method or None)``: what the layer reads and how it resizes it."""
        raise NotImplementedError

    def forward(self, x, mask=None):
        self._check(x)
        window, method = self.plan(x.shape[1:3])
        self._check_work(x.shape[1:3], x.shape[3], window, method)
        img = window.take(x, self.fill(x.dtype))
        if method is None:
            return img
        if x.dtype.kind not in "iu":
            return resize(img, self.target, method, self.antialias)
        # integer images: TF's kernels read them as float32; Keras rounds the result (half
        # to even) and casts back to the input's dtype, saturating
        y = resize(img.astype(np.float32), self.target, method, self.antialias)
        info = np.iinfo(x.dtype)
        return np.clip(np.round(y), info.min, info.max).astype(x.dtype)

    antialias = False

    def fill(self, dtype):
        return 0

    def forward_train(self, x, mask, ctx):
        self._saved = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None, []
        shape = self._saved
        window, method = self.plan(shape[1:3])
        if method is not None:
            dy = resize_backward(dy, window.region(shape[1:3]), method, self.antialias)
        return window.adjoint(dy, shape), []


class Resizing(_ImageLayer):
    """``keras.layers.Resizing(height, width, interpolation, crop_to_aspect_ratio,
    pad_to_aspect_ratio, fill_mode="constant", fill_value, antialias)``: the window
    (:func:`tf_aspect_window`) resized by :func:`resize`. Interpolations: bilinear, nearest,
    bicubic, area, lanczos3, lanczos5. Backward: the adjoint of the window and the resize."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.interpolation = self.require("interpolation", RESIZE_METHODS, "bilinear")
        self.crop_to_aspect = bool(config.get("crop_to_aspect_ratio", False))
        self.pad_to_aspect = bool(config.get("pad_to_aspect_ratio", False))
        if self.crop_to_aspect and self.pad_to_aspect:
            raise ModelFileError(f"Resizing layer '{self.name}': crop_to_aspect_ratio and "
                                 "pad_to_aspect_ratio are both set, which Keras refuses; the file is corrupt")
        self.require("fill_mode", ("constant",), "constant")
        self.fill_value = float(config.get("fill_value", 0.0) or 0.0)
        self.antialias = bool(config.get("antialias", False))

    def fill(self, dtype):
        """``tf.ones(dtype) * fill_value``: the fill in the image's dtype."""
        return np.dtype(dtype).type(self.fill_value)

    def plan(self, hw):
        if self.crop_to_aspect:
            return tf_aspect_window(hw, self.target, "crop"), self.interpolation
        if self.pad_to_aspect:
            return tf_aspect_window(hw, self.target, "pad"), self.interpolation
        return Window(), self.interpolation


class CenterCrop(_ImageLayer):
    """``keras.layers.CenterCrop(height, width)``: x[:, (H - h) // 2 :, (W - w) // 2 :] cut to
    (h, w) when the input is at least that large in both sides; otherwise Keras'
    ``smart_resize`` (the largest centred crop of the target's aspect ratio, then bilinear).
    Backward: the crop's (and resize's) adjoint."""

    def plan(self, hw):
        (h, w), (th, tw) = hw, self.target
        if h >= th and w >= tw:
            return Window(crop=((h - th) // 2, th, (w - tw) // 2, tw)), None
        return smart_resize_window(hw, self.target), "bilinear"
