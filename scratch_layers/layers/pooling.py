"""Pooling layers: max and average pooling in 1-D and 2-D (TF 'same' padding: extra pad
bottom/right; 'same' average pooling divides by the valid cells) and global pooling."""
import numpy as np

from ..blas import for_blocks
from ..errors import InputError
from .bounds import check_sample_elements
from .conv import _out_and_pads, pad2d
from .layer import KeepsInputOutput, Layer


def live_offsets(k, stride, before, size, out):
    """The pool offsets a in [0, k) whose strided slab of the padded axis (cells
    a + i*stride, i < ``out``) reaches a real cell, in [before, before + size). The others
    read padding only, so skipping them changes nothing: max pooling's NaN pads are
    ignored by fmax; average pooling's zero pads add +0.0 (at most turning a sum of -0.0
    into +0.0, an equal value) and its divisor counts real cells anyway. A pool far
    larger than its input then costs as many offsets as the input has cells, not k.
    The range: offset a >= before reads a real cell iff a < before + size (its first
    cell); a < before first reaches [before, before + stride) at i = ceil((before - a) /
    stride), a real cell when stride <= size, so iff i <= out - 1, i.e. a >= before -
    (out - 1)*stride; and stride > size gives out = 1 in TF's 'same' and 'valid' alike.
    Hence [before - (out - 1)*stride, before + size) within [0, k)."""
    return range(max(0, before - (out - 1) * stride), min(k, before + size))


def pool2d(x, pool, strides, padding, mode):
    """Max / average pooling on (N, H, W, C), TF semantics.

    Max pooling ignores NaN as TF does (np.fmax; 'same' pads are NaN, so they never
    win); a window with no number left is NaN here and becomes the dtype's lowest
    value in :func:`tf_max_floor`. Average pooling divides each window by its number of
    real (non-pad) cells. Loops over the pool offsets only (ph*pw strided views,
    those reading padding only skipped: :func:`live_offsets`), never over pixels."""
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    ho, pt, pb = _out_and_pads(h, ph, sh, 1, padding)
    wo, pl, pr = _out_and_pads(w, pw, sw, 1, padding)
    if ho <= 0 or wo <= 0:
        raise InputError(f"input spatial size {(h, w)} is too small for pool size {pool}")
    fill = np.nan if mode == "max" else 0.0
    xp = pad2d(x, ((pt, pb), (pl, pr)), fill)
    out = None
    for a in live_offsets(ph, sh, pt, h, ho):
        for b in live_offsets(pw, sw, pl, w, wo):
            v = xp[:, a:a + (ho - 1) * sh + 1:sh, b:b + (wo - 1) * sw + 1:sw, :]
            if out is None:
                out = v.copy()
            elif mode == "max":
                np.fmax(out, v, out=out)
            else:
                out += v
    if mode == "avg":
        if pt or pb or pl or pr:
            # count of real cells per output position (outer product of 1-D counts)
            def counts(size, k, s, before, nout):
                starts = np.arange(nout) * s - before
                return (np.minimum(starts + k, size) - np.maximum(starts, 0)).astype(x.dtype)
            cnt = np.outer(counts(h, ph, sh, pt, ho), counts(w, pw, sw, pl, wo))
            out /= cnt[None, :, :, None]
        else:
            out /= ph * pw
    return out


def pool2d_backward(x, y, dy, pool, strides, padding, mode):
    """dL/dx of :func:`pool2d` (y its output). Max: each window's gradient goes to its
    first maximal cell in row-major order (as TF's MaxPoolGrad); a window with no number
    passes nothing. Average: each window's gradient is split evenly over its real cells.
    Loops over the pool offsets only; overlapping windows accumulate."""
    n, h, w, c = x.shape
    ph, pw = pool
    sh, sw = strides
    ho, pt, pb = _out_and_pads(h, ph, sh, 1, padding)
    wo, pl, pr = _out_and_pads(w, pw, sw, 1, padding)
    if (sh, sw) == (ph, pw) and not (pt or pb or pl or pr):
        dx = np.empty(x.shape, dy.dtype)
        for_blocks(lambda s: _tiled_pool_backward(x[s], y[s], dy[s], pool, mode, dx[s]), n, x.size)
        return dx
    dxp = np.zeros((n, h + pt + pb, w + pl + pr, c), dy.dtype)
    windows = [(slice(None), slice(a, a + (ho - 1) * sh + 1, sh), slice(b, b + (wo - 1) * sw + 1, sw))
               for a in live_offsets(ph, sh, pt, h, ho) for b in live_offsets(pw, sw, pl, w, wo)]
    if mode == "max":
        xp = pad2d(x, ((pt, pb), (pl, pr)), np.nan)
        open_ = np.ones(y.shape, bool)  # windows whose maximum has not been found yet
        for win in windows:
            hit = xp[win] == y
            hit &= open_
            open_ &= ~hit
            dxp[win] += np.where(hit, dy, 0.0)
    else:
        if pt or pb or pl or pr:
            def counts(size, k, s, before, nout):
                starts = np.arange(nout) * s - before
                return (np.minimum(starts + k, size) - np.maximum(starts, 0)).astype(dy.dtype)
            share = dy / np.outer(counts(h, ph, sh, pt, ho), counts(w, pw, sw, pl, wo))[None, :, :, None]
        else:
            share = dy / (ph * pw)
        for win in windows:
            dxp[win] += share
    return dxp[:, pt:pt + h, pl:pl + w]


def _tiled_pool_backward(x, y, dy, pool, mode, dx):
    """:func:`pool2d_backward` when the windows tile the input (strides = pool size, no
    padding; rows/columns past the last window get nothing): one reshape of dx, no
    accumulation. Writes every cell of ``dx``."""
    n, _, _, c = x.shape
    ph, pw = pool
    ho, wo = y.shape[1:3]
    dx[:, ho * ph:] = 0
    dx[:, :, wo * pw:] = 0
    tiles = (n, ho, ph, wo, pw, c)
    region = dx[:, :ho * ph, :wo * pw].reshape(tiles)  # splitting axes: a view of dx
    dy_b = dy[:, :, None, :, None, :]
    if mode != "max":
        np.divide(dy_b, ph * pw, out=region)
        return
    hit = x[:, :ho * ph, :wo * pw].reshape(tiles) == y[:, :, None, :, None, :]
    taken = hit[:, :, 0, :, 0].copy()
    for a in range(ph):
        for b in range(pw):
            if a or b:  # keep only each window's first maximum in row-major order
                cell = hit[:, :, a, :, b]
                cell &= ~taken
                taken |= cell
    if np.isfinite(dy).all():
        np.multiply(dy_b, hit, out=region)  # 3x faster than a masked copy; x * 0 = 0 here
    else:
        region[...] = 0
        np.copyto(region, dy_b, where=hit)


class PoolingBackward(KeepsInputOutput):
    """forward_train and backward of the pooling layers (see :func:`pool2d_backward`), and
    the size check of 'same' pooling's padded input."""

    def check_padded(self, pool, x_shape=None, strides=None):
        """'same' pooling pads its input to at least the pool size per axis: that padded
        sample, of the (N, H, W, C) input of ``x_shape`` (None: a 1x1x1 input's, a lower
        bound from the config alone), is checked against
        :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS` before allocating."""
        if self.padding != "same":
            return
        if x_shape is None:
            check_sample_elements(self, pool, "padded input")
            return
        dims = [size + before + after for size, k, s in zip(x_shape[1:3], pool, strides)
                for _, before, after in [_out_and_pads(size, k, s, 1, "same")]]
        check_sample_elements(self, dims + [x_shape[-1]], "padded input")

    def forward_train(self, x, mask, ctx):
        """``forward`` in blocks of samples on the worker threads (windows never cross
        samples); keeps (x, y) for the backward pass."""
        parts = for_blocks(lambda s: self.forward(x[s], None if mask is None else mask[s]),
                           len(x), x.size)
        y = parts[0] if len(parts) == 1 else np.concatenate(parts)
        self._saved = (x, y)
        return y

    def backward(self, dy, need_dx=True):
        x, y = self._saved
        if x.ndim == 3:  # 1-D pooling runs as 2-D with H = 1
            dx = pool2d_backward(x[:, None], y[:, None], dy[:, None], (1, self.pool),
                                 (1, self.stride), self.padding, self.mode)[:, 0]
        else:
            dx = pool2d_backward(x, y, dy, self.pool, self.strides, self.padding, self.mode)
        return dx, []


def tf_max_floor(y):
    """TF's max pooling starts every window at the dtype's lowest finite value and
    skips NaN: a window of only NaN/-inf gives that value (-3.4e38 in float32 Keras,
    -1.8e308 in float64). Applied in place after :func:`pool2d`. In predict, TF's graph
    optimizer rewrites max_pool(relu(x)) as relu(max_pool(x)), so a window of only NaN
    after Conv2D(relu) gives relu(lowest) = 0: the fused Conv2D -> MaxPooling2D path
    (pool, then bias and relu) gives the same."""
    return np.fmax(y, np.finfo(y.dtype).min, out=y)


class Pooling2D(PoolingBackward, Layer):
    """MaxPooling2D / AveragePooling2D (channels_last). strides default to pool_size."""

    mode = "max"

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.padding = self.require("padding", ("valid", "same"), "valid")
        self.pool = self.sizes("pool_size", 2, 2)
        self.strides = self.pool if config.get("strides") is None else self.sizes("strides", 2, 1)
        self.check_padded(self.pool)

    def forward(self, x, mask=None):
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        self.check_padded(self.pool, x.shape, self.strides)
        y = pool2d(x, self.pool, self.strides, self.padding, self.mode)
        return tf_max_floor(y) if self.mode == "max" else y

    def max_pool_window(self):
        return (self.pool, self.strides, self.padding) if self.mode == "max" else None


class MaxPooling2D(Pooling2D):
    mode = "max"


class AveragePooling2D(Pooling2D):
    mode = "avg"


class Pooling1D(PoolingBackward, Layer):
    """MaxPooling1D / AveragePooling1D on (N, L, C) via the 2-D routine with H=1."""

    mode = "max"

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.padding = self.require("padding", ("valid", "same"), "valid")
        self.pool = self.sizes("pool_size", 1, 2)[0]
        self.stride = self.pool if config.get("strides") is None else self.sizes("strides", 1, 1)[0]
        self.check_padded((self.pool,))

    def forward(self, x, mask=None):
        self.check_rank(x, 3, "sequence batch (N, L, C)")
        self.check_padded((1, self.pool), x[:, None].shape, (1, self.stride))
        y = pool2d(x[:, None], (1, self.pool), (1, self.stride), self.padding, self.mode)[:, 0]
        return tf_max_floor(y) if self.mode == "max" else y


class MaxPooling1D(Pooling1D):
    mode = "max"


class AveragePooling1D(Pooling1D):
    mode = "avg"


class GlobalPooling(Layer):
    """Global{Average,Max}Pooling{1,2,3}D: reduce all spatial axes; ``keepdims`` option.
    GlobalAveragePooling1D honours a mask (mean over unmasked steps), like Keras."""

    mode = "avg"
    rank = 2

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.keepdims = bool(config.get("keepdims", False))

    def forward(self, x, mask=None):
        self.check_rank(x, self.rank + 2)
        axes = tuple(range(1, 1 + self.rank))
        if self.mode == "max":
            return x.max(axis=axes, keepdims=self.keepdims)
        if mask is not None and self.rank == 1:
            m = mask.astype(x.dtype)[..., None]
            return (x * m).sum(axis=1, keepdims=self.keepdims) / m.sum(axis=1, keepdims=self.keepdims)
        return x.mean(axis=axes, keepdims=self.keepdims)

    def forward_train(self, x, mask, ctx):
        y = self.forward(x, mask)
        self._saved = (x, mask, y)
        return y

    def backward(self, dy, need_dx=True):
        """avg: dx = dy / count (masked 1-D: dy * m / sum(m)); max: dy split evenly over
        the cells equal to the maximum (TF's reduce_max gradient)."""
        x, mask, y = self._saved
        axes = tuple(range(1, 1 + self.rank))
        if not self.keepdims:
            dy = np.expand_dims(dy, axes)
            y = np.expand_dims(y, axes)
        if self.mode == "max":
            hit = (x == y).astype(x.dtype)
            return hit * (dy / hit.sum(axis=axes, keepdims=True)), []
        if mask is not None and self.rank == 1:
            m = mask.astype(x.dtype)[..., None]
            return m * (dy / m.sum(axis=1, keepdims=True)), []
        count = int(np.prod([x.shape[a] for a in axes]))
        return np.broadcast_to(dy / count, x.shape).copy(), []


def _global(mode, rank):
    return type(f"Global{mode.title()}Pooling{rank}D", (GlobalPooling,), {"mode": mode, "rank": rank})


GlobalAveragePooling2D = _global("avg", 2)
GlobalMaxPooling2D = _global("max", 2)
GlobalAveragePooling1D = _global("avg", 1)
GlobalMaxPooling1D = _global("max", 1)
GlobalAveragePooling3D = _global("avg", 3)
GlobalMaxPooling3D = _global("max", 3)
