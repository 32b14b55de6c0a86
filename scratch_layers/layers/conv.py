"""Convolutions (channels_last), vectorised with NumPy: the im2col/col2im and depthwise
maths every convolution layer uses, and Conv1D/Conv2D.

Convolution uses im2col: the padded input is gathered once into a contiguous
``(N*Ho*Wo, kh*kw*C)`` buffer (one strided copy per kernel offset, so the copy
loop runs kh*kw times, never over pixels or samples) and multiplied with the
kernel reshaped to ``(kh*kw*C, F)`` in a single BLAS matmul.
"""
import copy
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import activations
from ..blas import block_sum, for_blocks, rows_matmul, rows_matmul_tn
from ..errors import InputError
from .. import workspace
from ..profiling import gemm
from . import winograd
from .activation import ClippedReLU, in_place
from .bounds import check_sample_elements
from .layer import Layer, positive_sizes, same_padding, valid_out


def _out_and_pads(size, k, stride, dilation, padding):
    if padding == "same":
        return same_padding(size, k, stride, dilation)
    out = valid_out(size, k, stride, dilation)
    return out, 0, 0


def pad2d(x, pads, value=0.0):
    """Pad axes 1 and 2 of an (N, H, W, C) array; returns x itself if no padding."""
    (t, b), (l, r) = pads
    if not (t or b or l or r):
        return x
    n, h, w, c = x.shape
    out = np.full((n, h + t + b, w + l + r, c), value, dtype=x.dtype)
    out[:, t:t + h, l:l + w] = x
    return out


def conv_geometry(x_shape, k_shape, strides, padding, dilation, explicit_pads=None):
    """``(ho, wo, ((pt, pb), (pl, pr)))`` of a 2-D convolution (TF 'same'/'valid', or the
    given explicit pads)."""
    _, h, w, _ = x_shape
    kh, kw = k_shape[:2]
    sh, sw = strides
    dh, dw = dilation
    if explicit_pads is not None:
        (pt, pb), (pl, pr) = explicit_pads
        ho = valid_out(h + pt + pb, kh, sh, dh)
        wo = valid_out(w + pl + pr, kw, sw, dw)
    else:
        ho, pt, pb = _out_and_pads(h, kh, sh, dh, padding)
        wo, pl, pr = _out_and_pads(w, kw, sw, dw, padding)
    if ho <= 0 or wo <= 0:
        raise InputError(f"input spatial size {(h, w)} is too small for kernel {(kh, kw)} "
                         f"with dilation {dilation} and padding '{padding}'")
    return ho, wo, ((pt, pb), (pl, pr))


def check_reach(layer, k_shape, dilation, channels):
    """Config-time lower bound of a convolution that pads ('same', Conv1D's 'causal'):
    even a 1x1 input is zero-padded to the kernel's reach (k-1)*d + 1 per axis, with
    ``channels`` channels; checked against
    :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS` when the layer is built
    (a dilation of 10**9 would pad by gigabytes)."""
    check_sample_elements(layer, [(k - 1) * d + 1 for k, d in zip(k_shape, dilation)] + [channels],
                          "zero-padded input")


def check_padded(layer, x_shape, pads, channels):
    """Per call, before padding: the (N, *spatial, C) input of ``x_shape`` zero-padded by
    ``pads`` (one (before, after) per spatial axis) with ``channels`` channels (C, or C*M
    in a depthwise tile buffer) against the cap; integer maths only."""
    check_sample_elements(layer, [s + a + b for s, (a, b) in zip(x_shape[1:-1], pads)] + [channels],
                          "zero-padded input")


def im2col(x, k_shape, strides, dilation, pads, ho, wo, out=None):
    """(N, Ho, Wo, kh, kw, C) contiguous patches: ONE strided view of the padded input,
    copied once (into ``out`` when given); with dilation 1 the (kw, C) axes are one
    contiguous run of kw*C values, which numpy's copy loop coalesces."""
    n, _, _, c = x.shape
    kh, kw = k_shape[:2]
    xp = pad2d(x, pads)
    s0, s1, s2, s3 = xp.strides
    view = as_strided(xp, (n, ho, wo, kh, kw, c),
                      (s0, s1 * strides[0], s2 * strides[1], s1 * dilation[0], s2 * dilation[1], s3),
                      writeable=False)
    if out is None:
        return np.ascontiguousarray(view)
    np.copyto(out, view)
    return out


def im2col_pool_offsets(x, k_shape, strides, dilation, pads, pool, hp, wp, out):
    """The patches of the convolution outputs a max pool of size and stride ``pool``
    (ph, pw) reads, grouped by pool offset: ``out`` (ph, pw, N, hp, wp, kh, kw, C) holds at
    [p, q, n, i, j] the patch of output (i*ph + p, j*pw + q). One GEMM then gives the
    ph*pw outputs of every window as contiguous row blocks, so the pool is a running
    maximum over ph*pw contiguous arrays. One strided copy, as :func:`im2col`."""
    n, _, _, c = x.shape
    kh, kw = k_shape[:2]
    ph, pw = pool
    xp = pad2d(x, pads)
    s0, s1, s2, s3 = xp.strides
    sh, sw = strides
    view = as_strided(xp, (ph, pw, n, hp, wp, kh, kw, c),
                      (s1 * sh, s2 * sw, s0, s1 * sh * ph, s2 * sw * pw, s1 * dilation[0],
                       s2 * dilation[1], s3), writeable=False)
    np.copyto(out, view)
    return out


def im2col_pool_pairs(x, k_shape, pads, ph, hp, wp, out):
    """The patches of horizontally adjacent output pairs of a stride-1, undilated
    convolution under a max pool of size and stride (ph, 2): ``out`` (ph, N, hp, wp, kh,
    (kw+1)*C) holds at [p, n, i, j] the (kh, kw+1, C) window under outputs (i*ph + p, 2j)
    and (i*ph + p, 2j + 1). Each patch is kh contiguous runs of (kw+1)*C values, for two
    outputs: half the runs of :func:`im2col_pool_offsets`, which pays when a run is short
    (few channels). Multiplied by :func:`pair_kernel`."""
    n, _, _, c = x.shape
    kh, kw = k_shape[:2]
    xp = np.ascontiguousarray(pad2d(x, pads))
    s0, s1, s2, s3 = xp.strides
    view = as_strided(xp, (ph, n, hp, wp, kh, (kw + 1) * c), (s1, s0, s1 * ph, s2 * 2, s1, s3),
                      writeable=False)
    np.copyto(out, view)
    return out


def pair_kernel(kernel):
    """(kh*(kw+1)*C, 2*F): the kernel of an output pair over its joint (kh, kw+1, C) patch
    (:func:`im2col_pool_pairs`): output q of the pair reads the kernel shifted right by q,
    zeros elsewhere (so each output sums the same products as im2col's, plus exact zeros)."""
    kh, kw, c, f = kernel.shape
    pair = np.zeros((kh, kw + 1, c, 2, f), kernel.dtype)
    pair[:, :kw, :, 0] = kernel
    pair[:, 1:, :, 1] = kernel
    return pair.reshape(kh * (kw + 1) * c, 2 * f)


def col2im(dz, kernel, x_shape, strides, dilation, pads):
    """dL/dx of a convolution, the adjoint of :func:`im2col` applied to dcols = dz K^T:
    dx[n, i*sh + a*dh - pt, j*sw + b*dw - pl, :] += dz[n, i, j, :] @ K[a, b]^T.
    Computed one kernel offset at a time (kh*kw matmuls, each added to one strided slab;
    within one offset the slab's cells are distinct, so ``+=`` is exact), which never
    holds the whole dcols buffer; then the pads are cut."""
    n, h, w, c = x_shape
    _, ho, wo, f = dz.shape
    kh, kw = kernel.shape[:2]
    (pt, pb), (pl, pr) = pads
    sh, sw = strides
    dh, dw = dilation
    rows = max(h + pt + pb, (kh - 1) * dh + (ho - 1) * sh + 1)
    cols = max(w + pl + pr, (kw - 1) * dw + (wo - 1) * sw + 1)
    dxp = np.zeros((n, rows, cols, c), dz.dtype)
    dz2 = dz.reshape(-1, f)
    for a in range(kh):
        for b in range(kw):
            dxp[:, a * dh:a * dh + (ho - 1) * sh + 1:sh, b * dw:b * dw + (wo - 1) * sw + 1:sw] += \
                np.matmul(dz2, kernel[a, b].T).reshape(n, ho, wo, c)
    return dxp[:, pt:pt + h, pl:pl + w]


def _is_pointwise(k_shape, strides, pads):
    return k_shape[0] == 1 and k_shape[1] == 1 and strides == (1, 1) and not any(pads[0] + pads[1])


def conv2d(x, kernel, strides=(1, 1), padding="valid", dilation=(1, 1), explicit_pads=None):
    """2-D cross-correlation as Keras/TF computes it.

    x: (N, H, W, C); kernel: (kh, kw, C, F) -> (N, Ho, Wo, F) with
    y[n,i,j,f] = sum_{a,b,c} xpad[n, i*sh + a*dh, j*sw + b*dw, c] * kernel[a,b,c,f].
    'same' padding follows TF (extra row/column at the bottom/right)."""
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    ho, wo, pads = conv_geometry(x.shape, kernel.shape, strides, padding, dilation, explicit_pads)
    if _is_pointwise(kernel.shape, tuple(strides), pads):
        return gemm(x.reshape(-1, c), kernel.reshape(c, f)).reshape(n, ho, wo, f)
    cols = im2col(x, kernel.shape, strides, dilation, pads, ho, wo)
    y = gemm(cols.reshape(n * ho * wo, kh * kw * c), kernel.reshape(kh * kw * c, f))
    return y.reshape(n, ho, wo, f)


def depthwise_geometry(x_shape, k_shape, strides, padding, dilation):
    """``(ho, wo, pads)`` of a depthwise convolution (the same as :func:`conv_geometry`);
    ``padding`` is 'valid', 'same' or explicit ((top, bottom), (left, right)) zero pads."""
    if isinstance(padding, str):
        return conv_geometry(x_shape, k_shape, strides, padding, dilation)
    return conv_geometry(x_shape, k_shape, strides, "valid", dilation, explicit_pads=padding)


def _offset_slab(a, b, strides, dilation, ho, wo):
    """Index of the strided (ho, wo) slab of the padded input that kernel offset (a, b)
    reads: rows a*dh + i*sh, columns b*dw + j*sw."""
    (sh, sw), (dh, dw) = strides, dilation
    return (slice(None), slice(a * dh, a * dh + (ho - 1) * sh + 1, sh),
            slice(b * dw, b * dw + (wo - 1) * sw + 1, sw))


# A tile of the depthwise convolution: its output rows and the input rows they read take
# about this many bytes (the L2 cache of one core on the benchmark machine), so the copy,
# the taps, the bias and the activation pass over data still in cache, and the input buffer
# stays this small however large the chunk. MobileNetV2's predict (64 images of 96x96,
# chunks of 4, two workers) took 25% longer with 256 KiB tiles (Python per tile), 2% with
# 1 MiB, and the same from 2 MiB up to untiled chunks.
DEPTHWISE_TILE_BYTES = 2 ** 21


def _valid_range(offset, stride, size, out):
    """The outputs i in [lo, hi) whose input index i*stride + offset lies in [0, size)."""
    lo = min(out, max(0, -(-(-offset) // stride)))
    hi = max(lo, min(out, (size - 1 - offset) // stride + 1))
    return lo, hi


def depthwise_conv2d(x, kernel, strides=(1, 1), padding="valid", dilation=(1, 1), bias=None,
                     activation=None):
    """Depthwise 2-D convolution as TF computes it: x (N, H, W, C), kernel (kh, kw, C, M)
    -> (N, Ho, Wo, C*M), output channel c*M + m:
    y[n, i, j, c, m] = sum_{a,b} xpad[n, i*sh + a*dh, j*sw + b*dw, c] * kernel[a, b, c, m]
    (+ ``bias``[c*M + m], then ``activation``; both optional). ``padding``: see
    :func:`depthwise_geometry`.

    It runs in tiles of output rows (whole images, several of them, when an image is
    small) of about :data:`DEPTHWISE_TILE_BYTES`. A tile's input rows are copied once into
    a reused buffer (:mod:`scratch_layers.workspace`) that holds their zero padding, each
    channel M times, and, for a column stride sw > 1, the kw columns each output reads side
    by side (``rows[q, b, j] = xpad[q, j*sw + b*dw]``). With the kernel tiled along an
    output row (``K[a, b, (j, c, m)] = kernel[a, b, c, m]``) the tile is ONE einsum over a
    strided view: out[n, i, l] = sum_{a,b} rows[n, i*sh + a*dh, b, l] * K[a, b, l] with
    l = (j, c, m), whose inner run is a whole output row (numpy's sum-of-products loop: the
    kh*kw multiply-adds in one pass, accumulated in the output, no temporary per tap).
    The bias and a relu or clipped relu (:func:`~scratch_layers.layers.activation.in_place`)
    are applied to the tile in place while it is in cache; any other activation afterwards.
    The loops run over tiles and the kw kernel columns, never over pixels or samples."""
    n, h, w, c = x.shape
    kh, kw, _, m = kernel.shape
    ho, wo, ((pt, _), (pl, pr)) = depthwise_geometry(x.shape, kernel.shape, strides, padding, dilation)
    (sh, sw), (dh, dw) = strides, dilation
    dtype = np.result_type(x, kernel)
    size = dtype.itemsize
    cm = c * m
    row = wo * cm  # one output row: the einsum's inner run
    taps = np.empty((kh, kw, wo, cm), dtype)
    taps[...] = kernel.reshape(kh, kw, 1, cm)
    taps = taps.reshape(kh, kw, row)
    bias_row = None
    if bias is not None:
        bias_row = np.empty((wo, cm), dtype)
        bias_row[...] = bias
        bias_row = bias_row.reshape(row)
    epilogue = None if activation is None else in_place(activation)
    y = np.empty((n, ho, wo, cm), dtype)

    gather = sw > 1  # the buffer holds the kw column sets side by side
    width = kw * wo if gather else w + pl + pr  # buffer row, in pixels
    reach = (kh - 1) * dh + 1  # input rows one output row reads

    def rows_for(r):
        return (r - 1) * sh + reach
    image_bytes = (ho * row + rows_for(ho) * width * cm) * size
    if image_bytes <= DEPTHWISE_TILE_BYTES:
        images, r = max(1, min(n, DEPTHWISE_TILE_BYTES // image_bytes)), ho
    else:
        images = 1
        r = (DEPTHWISE_TILE_BYTES // size - (reach - sh) * width * cm) // (row + sh * width * cm)
        r = int(min(ho, max(1, r)))
    buf = workspace.buffer("depthwise_rows", (images, rows_for(r), width, cm), dtype)
    # the pad columns (or, gathered, the outputs whose column b falls in the padding) are
    # the same in every tile: zeroed once per call
    shifts = []  # (set b, set b - sw): gathered, set b is set b - sw one column on
    if gather:
        col_runs = []
        for b in range(kw):
            lo, hi = _valid_range(b * dw - pl, sw, w, wo)
            buf[:, :, b * wo:b * wo + lo] = 0
            buf[:, :, b * wo + hi:(b + 1) * wo] = 0
            if b >= sw and dw == 1:
                # rows[b, j] = rows[b - sw, j + 1] (the same input column, or both padding):
                # one contiguous copy per row instead of a gather of C-long runs; only the
                # last column comes from the input
                shifts.append((slice(b * wo, (b + 1) * wo - 1), slice((b - sw) * wo + 1, (b - sw + 1) * wo)))
                lo = max(lo, wo - 1)
            src = slice(lo * sw + b * dw - pl, (hi - 1) * sw + b * dw - pl + 1, sw)
            if hi > lo:
                col_runs.append((slice(b * wo + lo, b * wo + hi), src))
        col_stride = wo * cm * size
    else:
        buf[:, :, :pl] = 0
        buf[:, :, pl + w:] = 0
        col_runs = [(slice(pl, pl + w), slice(None))]
        col_stride = dw * cm * size
    rs = width * cm * size  # buffer row stride, bytes
    view_strides = (buf.strides[0], sh * rs, dh * rs, col_stride, size)

    for n0 in range(0, n, images):
        nb = min(images, n - n0)
        for i0 in range(0, ho, r):
            rt = min(r, ho - i0)
            top = i0 * sh - pt  # input row of the tile's first buffer row
            q_lo, q_hi = _valid_range(top, 1, h, rows_for(rt))
            if q_lo:
                buf[:nb, :q_lo] = 0
            if q_hi < rows_for(rt):
                buf[:nb, q_hi:rows_for(rt)] = 0
            if q_hi > q_lo:
                src_rows = x[n0:n0 + nb, top + q_lo:top + q_hi]
                for dst_cols, src_cols in col_runs:
                    dst = buf[:nb, q_lo:q_hi, dst_cols]
                    src = src_rows[:, :, src_cols]
                    if m == 1:
                        np.copyto(dst, src)
                    else:  # channel c repeated M times: output channels c*M + m
                        np.copyto(dst.reshape(dst.shape[:-1] + (c, m)), src[..., None])
                for dst_cols, src_cols in shifts:
                    np.copyto(buf[:nb, q_lo:q_hi, dst_cols], buf[:nb, q_lo:q_hi, src_cols])
            view = np.ndarray((nb, rt, kh, kw, row), dtype, buffer=buf, strides=view_strides)
            out = y[n0:n0 + nb, i0:i0 + rt].reshape(nb, rt, row)
            np.einsum("niabl,abl->nil", view, taps, out=out)
            if bias_row is not None:
                np.add(out, bias_row, out=out)
            if epilogue is not None:
                epilogue(out)
    if activation is not None and epilogue is None:
        y = activation(y)
    return y


def depthwise_conv2d_backward(x, kernel, dz, strides, padding, dilation, need_dx=True):
    """Gradients of :func:`depthwise_conv2d` (``x`` its input, ``dz`` dL/dy as
    (N, Ho, Wo, C*M)): per kernel offset (a, b), with the slab P = xpad[:, a*dh::sh, b*dw::sw]
    (ho x wo), dK[a, b, c, m] = sum_{n,i,j} P[n, i, j, c] dz[n, i, j, c, m] and
    dxpad[slab] += sum_m dz[..., c, m] K[a, b, c, m]; the pads are cut from dxpad.
    Returns (dK, dx or None)."""
    n, h, w, c = x.shape
    kh, kw, _, m = kernel.shape
    ho, wo, pads = depthwise_geometry(x.shape, kernel.shape, strides, padding, dilation)
    ((pt, _), (pl, _)) = pads
    xp = pad2d(x, pads)
    dz5 = dz.reshape(n, ho, wo, c, m)
    dk = np.empty(kernel.shape, dz.dtype)
    dxp = np.zeros(xp.shape, dz.dtype) if need_dx else None
    for a in range(kh):
        for b in range(kw):
            slab = _offset_slab(a, b, strides, dilation, ho, wo)
            # c_einsum's own loop (optimize=False): its BLAS path copies the strided slab
            dk[a, b] = np.einsum("nijc,nijcm->cm", xp[slab], dz5)
            if need_dx:
                if m == 1:
                    dxp[slab] += dz5[..., 0] * kernel[a, b, :, 0]
                else:
                    dxp[slab] += np.einsum("nijcm,cm->nijc", dz5, kernel[a, b])
    dx = None if dxp is None else dxp[:, pt:pt + h, pl:pl + w]
    return dk, dx


class AbsorbsAffine:
    """Conv2D and DepthwiseConv2D, while linear, absorb a following per-channel affine layer
    (BatchNormalization at inference), ``conv(x, W) * mul + add == conv(x, W * mul) + add``
    per output channel (to float64 rounding, ~1e-16 relative), and a following ReLU, plain or
    clipped (``Layer.relu_ceiling``: ReLU(max_value=6), Activation('relu6')), which the fused
    layer applies in place to its own output (``activations.relu``, :class:`ClippedReLU`).
    ``output_channel_dims``: the kernel's trailing axes that make the output channel (a
    depthwise kernel (kh, kw, C, M) has output channel c*M + m)."""

    absorbs_following = True  # subclasses that run another kernel opt out
    output_channel_dims = 1

    def absorb(self, following):
        if not self.absorbs_following or self.activation is not activations.linear:
            return None
        ceiling = following.relu_ceiling()
        if ceiling is not None:
            fused = copy.copy(self)
            fused.activation = activations.relu if ceiling == math.inf else ClippedReLU(ceiling)
            return fused
        affine = following.channel_affine(4)
        dims = self.kernel.shape[-self.output_channel_dims:]
        if affine is None or np.shape(affine[0]) != (int(np.prod(dims)),):
            return None
        mul, add = affine
        fused = copy.copy(self)
        fused.kernel = np.ascontiguousarray(self.kernel * mul.reshape(dims))
        fused.bias = self.bias * mul + add if self.bias is not None else np.array(add, copy=True)
        return fused

    def workspace_per_sample(self, output_size):
        k = self.kernel
        return output_size // k.shape[-1] * k.shape[0] * k.shape[1] * k.shape[2]


def read_conv_options(layer, config, weights, spatial):
    """The config of a Conv2D or Conv3D read alike: channels_last, 'valid'/'same' padding,
    ``spatial`` strides and dilation (not both > 1, as Keras), no LoRA; sets ``padding``,
    ``strides``, ``dilation``, ``kernel`` (contiguous), ``bias`` (None without
    ``layer.use_bias``) and ``activation`` on the layer."""
    layer.require("data_format", ("channels_last", None), "channels_last")
    layer.padding = layer.require("padding", ("valid", "same"), "valid")
    layer.strides = layer.sizes("strides", spatial, 1)
    layer.dilation = layer.sizes("dilation_rate", spatial, 1)
    if max(layer.strides) > 1 and max(layer.dilation) > 1:
        raise layer.unsupported("strides+dilation_rate", (layer.strides, layer.dilation),
                                "Keras itself rejects strides > 1 with dilation > 1")
    if config.get("lora_rank"):
        raise layer.unsupported("lora_rank", config.get("lora_rank"))
    layer.kernel = np.ascontiguousarray(weights[0])
    layer.bias = weights[1] if layer.use_bias else None
    layer.activation = activations.get(config.get("activation"), f"{layer.class_name} '{layer.name}'")


class Conv2D(AbsorbsAffine, Layer):
    """Conv2D: y = activation(conv2d(x, kernel) + bias); channels_last. ``groups`` > 1
    builds a :class:`GroupedConv2D`."""

    spatial = 2  # number of spatial axes of the kernel
    # the output is activation(convolve(x) + bias) with a monotonic activation (relu or
    # linear): a following max pool may run on convolve(x) first (see engine.fusions)
    max_pool_commutes = True

    def __new__(cls, config=None, weights=None, class_name=None):
        if cls is Conv2D and isinstance(config, dict) and int(config.get("groups", 1) or 1) > 1:
            cls = GroupedConv2D
        return super().__new__(cls)

    @classmethod
    def weight_shapes(cls, config):
        """kernel (*kernel_size, in, filters) [+ bias (filters,)]."""
        where = f"{cls.__name__} layer '{config.get('name')}'"
        k = positive_sizes(config["kernel_size"], cls.spatial, where, "kernel_size")
        f = int(config["filters"])
        return [k + ("in", f)] + ([(f,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 2 if self.use_bias else 1
        super().__init__(config, weights, class_name)
        self.rank = 2
        if type(self) is not GroupedConv2D:
            self.require("groups", (1,), 1)
        read_conv_options(self, config, weights, 2)
        if self.spatial == 2:
            self.check_config_sizes()

    def check_config_sizes(self):
        """The zero-padded input's lower bound from the config alone (:func:`check_reach`)."""
        if self.padding == "same" or getattr(self, "causal", False):
            check_reach(self, self.kernel.shape[:2], self.dilation, self.kernel.shape[2])

    def check_sizes(self, x_shape, pads, ho, wo):
        """Per call, after the geometry and before any allocation: the zero-padded input
        and the output against the cap (:func:`check_padded`)."""
        check_padded(self, x_shape, pads, x_shape[-1])
        check_sample_elements(self, (ho, wo, self.kernel.shape[-1]))

    def convolve(self, x):
        """conv2d(x, kernel) without bias and activation: Winograd where it pays
        (:meth:`winograd_tile`), else im2col and one GEMM."""
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        self.check_last_dim(x, self.kernel.shape[2])
        ho, wo, pads = conv_geometry(x.shape, self.kernel.shape, self.strides, self.padding, self.dilation,
                                     self.explicit_pads)
        self.check_sizes(x.shape, pads, ho, wo)
        m = self.winograd_tile(x.dtype, ho, wo, len(x))
        if m is not None:
            return winograd.winograd_conv2d(x, self._winograd_kernel(m, x.dtype), m, pads, ho, wo)
        return conv2d(x, self.kernel, self.strides, self.padding, self.dilation, self.explicit_pads)

    explicit_pads = None  # set on the copy that absorbed a ZeroPadding2D (predict's plan)

    def absorb_zero_padding(self, pads):
        """This convolution on its input zero-padded by ``pads`` (a ZeroPadding2D before
        it), as one layer that pads inside im2col or Winograd; only for 'valid' padding
        (TF's 'same' pads depend on the padded size)."""
        if type(self).convolve is not Conv2D.convolve or self.padding != "valid" or self.explicit_pads:
            return None
        fused = copy.copy(self)
        fused.explicit_pads = tuple(tuple(int(v) for v in p) for p in pads)
        return fused

    def convolve_max_pooled(self, x, pool, pool_strides):
        """max_pool(convolve(x)) for a max pool of size ``pool`` whose stride equals its size
        and whose windows tile the output exactly (so 'same' pads nothing); None when the
        pool is not of that kind. The pool never sees the full-size output: Winograd takes
        it inside each tile, im2col orders the patches by pool offset
        (:func:`im2col_pool_offsets`) so it is a maximum over contiguous GEMM blocks."""
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        self.check_last_dim(x, self.kernel.shape[2])
        k = self.kernel
        ho, wo, pads = conv_geometry(x.shape, k.shape, self.strides, self.padding, self.dilation,
                                     self.explicit_pads)
        self.check_sizes(x.shape, pads, ho, wo)
        ph, pw = pool
        if tuple(pool) != tuple(pool_strides) or ho % ph or wo % pw:
            return None
        m = self.winograd_tile(x.dtype, ho, wo, len(x))
        if m is not None and winograd.pools_in_tiles(m, ho, wo, pool, pool_strides):
            return winograd.winograd_conv2d(x, self._winograd_kernel(m, x.dtype), m, pads, ho, wo, pool)
        n, f = len(x), k.shape[-1]
        hp, wp = ho // ph, wo // pw
        if self.pairs_pay(pool) and np.isfinite(x).all():  # a pair's zero weights: inf*0 = NaN
            cols = workspace.buffer("conv_a", (ph, n, hp, wp, k.shape[0], (k.shape[1] + 1) * k.shape[2]), x.dtype)
            im2col_pool_pairs(x, k.shape, pads, ph, hp, wp, cols)
            y = gemm(cols.reshape(ph * n * hp * wp, -1), self._derived_kernel("pairs", x.dtype, pair_kernel),
                     out=workspace.buffer("conv_b", (ph * n * hp * wp, 2 * f), x.dtype))
            y = y.reshape(ph, n * hp * wp, 2, f)
            out = np.fmax(y[0, :, 0], y[0, :, 1])
            for p in range(1, ph):
                np.fmax(out, y[p, :, 0], out=out)
                np.fmax(out, y[p, :, 1], out=out)
            return out.reshape(n, hp, wp, f)
        cols = workspace.buffer("conv_a", (ph, pw, n, hp, wp) + k.shape[:3], x.dtype)
        im2col_pool_offsets(x, k.shape, self.strides, self.dilation, pads, pool, hp, wp, cols)
        y = gemm(cols.reshape(-1, k[..., 0].size), k.reshape(-1, f),
                 out=workspace.buffer("conv_b", (ph * pw * n * hp * wp, f), x.dtype))
        y = y.reshape(ph * pw, n * hp * wp, f)
        out = np.fmax(y[0], y[1]) if len(y) > 1 else y[0].copy()
        for other in y[2:]:
            np.fmax(out, other, out=out)
        return out.reshape(n, hp, wp, f)

    # Winograd pays from this many input channels on (measured on a 2-core Xeon with
    # AVX-512 in predict of the study CNN: its 32-channel conv 1.05 s against im2col's
    # 1.21 s per 10,000 images in float32); below, the transforms cost more than they save
    WINOGRAD_MIN_CHANNELS = 32
    # ... and from this many tiles per call: each transform point's GEMM has one row per
    # tile and reads its whole (C, F) block of the transformed kernel, (m+2)^2/9 times the
    # kernel im2col reads (ResNet50's 3x3 maps in chunks of 2 images: 2 rows against 512x512,
    # 60% slower than im2col). 16 lets the study CNN's 8x8 conv take Winograd in float64,
    # whose blocks hold 7 images (28 tiles): 0.33 -> 0.23 s per 1,000 images, two workers;
    # float32 and ResNet50 unchanged
    WINOGRAD_MIN_TILES = 16
    # ... and while the transformed kernel U ((m+2)^2 C F values, 4x the kernel for F(4x4))
    # stays this small: each transform point's GEMM streams its (C, F) block of U for a few
    # tile rows, and U is kept per layer (ResNet50's 512x512 stage-5 kernels would hold
    # 75 MB each in float64 and read 4x the bytes im2col's GEMM reads)
    WINOGRAD_MAX_KERNEL_BYTES = 4 * 2 ** 20

    def winograd_tile(self, dtype, ho, wo, n):
        """The Winograd tile m for this convolution of ``n`` images (3x3 kernel, stride 1,
        no dilation, enough channels and tiles), or None for im2col."""
        k = self.kernel
        if (k.shape[:2] != (3, 3) or tuple(self.strides) != (1, 1) or tuple(self.dilation) != (1, 1)
                or k.shape[2] < self.WINOGRAD_MIN_CHANNELS):
            return None
        m = winograd.choose_tile(ho, wo)
        if (m + 2) ** 2 * k.shape[2] * k.shape[3] * np.dtype(dtype).itemsize > self.WINOGRAD_MAX_KERNEL_BYTES:
            return None
        return m if n * math.prod(winograd.tiles(ho, wo, m)) >= self.WINOGRAD_MIN_TILES else None

    # Output pairs (im2col_pool_pairs) pay when a patch row holds at most this many values
    # (kw * C): on the 2-core Xeon, the study CNN's first conv (3x3, 3 channels) takes 41
    # instead of 65 ms per 1,000 images; with a 5x5 kernel (15 values) both take 82 ms,
    # the 4/3 more multiply-adds eating what the copy saves
    PAIRS_MAX_PATCH_ROW = 9

    def pairs_pay(self, pool):
        """Whether the pooled convolution runs on output pairs (:func:`im2col_pool_pairs`):
        a (ph, 2) pool, stride 1, no dilation, short patch rows."""
        kh, kw, c, _ = self.kernel.shape
        return (pool[1] == 2 and tuple(self.strides) == (1, 1) and tuple(self.dilation) == (1, 1)
                and kw * c <= self.PAIRS_MAX_PATCH_ROW)

    def _winograd_kernel(self, m, dtype):
        """U = G g G^T of this layer's current kernel (:meth:`_derived_kernel`)."""
        return self._derived_kernel(("winograd", m), dtype, lambda k: winograd.transform_kernel(k, m, dtype))

    def _derived_kernel(self, name, dtype, build):
        """``build(kernel)`` in ``dtype`` for this layer's current kernel, cached per (name,
        dtype) and recomputed when the kernel array is replaced (e.g. by absorbing a
        BatchNormalization)."""
        cache = self.__dict__.get("_kernel_cache")
        if cache is None or cache[0] is not self.kernel:
            cache = self._kernel_cache = (self.kernel, {})
        key = (name, np.dtype(dtype))
        if key not in cache[1]:
            cache[1][key] = np.ascontiguousarray(build(self.kernel), dtype=dtype)
        return cache[1][key]

    def forward(self, x, mask=None):
        y = self.convolve(x)
        if self.bias is not None:
            y += self.bias
        if self.activation is activations.relu:
            return np.maximum(y, 0.0, out=y)  # fused, in place
        return self.activation(y)

    def _as_image(self, x):
        """(input as (N, H, W, C), explicit pads or None); Conv1D adds H = 1."""
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        return x, None

    def forward_train(self, x, mask, ctx):
        """z = im2col(x) @ K + b (the patches are kept for the backward pass); y = act(z).
        The patch copy and the matmul run in row blocks on the worker threads."""
        x4, explicit = self._as_image(x)
        self.check_last_dim(x4, self.kernel.shape[2])
        k = self.kernel
        ho, wo, pads = conv_geometry(x4.shape, k.shape, self.strides, self.padding,
                                     self.dilation, explicit)
        self.check_sizes(x4.shape, pads, ho, wo)
        n = x4.shape[0]
        pointwise = _is_pointwise(k.shape, tuple(self.strides), pads)
        if pointwise:
            cols = x4.reshape(-1, k.shape[2])
        else:
            cols = np.empty((n, ho, wo) + k.shape[:3], x4.dtype)
            for_blocks(lambda s: im2col(x4[s], k.shape, self.strides, self.dilation, pads, ho, wo,
                                        out=cols[s]), n, cols.size)
            cols = cols.reshape(-1, k.shape[0] * k.shape[1] * k.shape[2])
        z = rows_matmul(cols, k.reshape(-1, k.shape[-1]), self.bias)
        z = z.reshape(n, ho, wo, k.shape[-1])
        y = self.activation(z)
        self._saved = (x4.shape, cols, pads, z, y, pointwise)
        return y if x.ndim == 4 else y[:, 0]

    def backward(self, dy, need_dx=True, wrt_preactivation=False):
        """dz = act'(z) dy;  dK = cols^T dz;  db = sum dz;  dx = col2im(dz K^T), the last
        two in row blocks on the worker threads."""
        x_shape, cols, pads, z, y, pointwise = self._saved
        dy = dy.reshape(y.shape)
        dz = dy if wrt_preactivation else activations.backward(
            self.activation, z, y, dy, f"{self.class_name} layer '{self.name}'")
        k = self.kernel
        dz2 = dz.reshape(-1, k.shape[-1])
        grads = [rows_matmul_tn(cols, dz2).reshape(self.weights[0].shape)]
        if self.bias is not None:
            grads.append(block_sum(lambda s: dz2[s].sum(axis=0), len(dz2), dz2.size))
        if not need_dx:
            return None, grads
        if pointwise:
            dx = rows_matmul(dz2, np.ascontiguousarray(k.reshape(-1, k.shape[-1]).T)).reshape(x_shape)
        else:
            dx = np.empty(x_shape, dz.dtype)

            def block(s):
                dx[s] = col2im(dz[s], k, dx[s].shape, self.strides, self.dilation, pads)
            for_blocks(block, len(dx), dz.size * k.shape[0] * k.shape[1])
        return (dx if len(self.weights[0].shape) == 4 else dx[:, 0]), grads


class GroupedConv2D(Conv2D):
    """Conv2D with ``groups`` = the number of input channels (ConvNeXt's depthwise
    convolutions): kernel (kh, kw, 1, F), filter f reads input channel f // (F / C). That
    is a depthwise convolution with multiplier M = F / C, kernel (kh, kw, C, M), whose
    output channel c*M + m is filter f: the same maths (:func:`depthwise_conv2d`)."""

    absorbs_following = False

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.groups = int(config["groups"])
        kh, kw, per_group, f = self.kernel.shape
        if per_group != 1 or f % self.groups:
            raise self.unsupported("groups", self.groups, "only groups equal to the number of input "
                                   "channels (a depthwise convolution, as in ConvNeXt) is supported")
        self.depthwise = self.kernel.reshape(kh, kw, self.groups, f // self.groups)

    def _check_sizes(self, x):
        """The depthwise pass's tile buffer holds the zero-padded input rows with F = C*M
        channels: checked against the cap per call."""
        _, _, pads = depthwise_geometry(x.shape, self.depthwise.shape, self.strides, self.padding,
                                        self.dilation)
        check_padded(self, x.shape, pads, self.kernel.shape[-1])

    def convolve(self, x):
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        self.check_last_dim(x, self.groups)
        self._check_sizes(x)
        return depthwise_conv2d(x, self.depthwise, self.strides, self.padding, self.dilation)

    def forward_train(self, x, mask, ctx):
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        self.check_last_dim(x, self.groups)
        self._check_sizes(x)
        z = depthwise_conv2d(x, self.depthwise, self.strides, self.padding, self.dilation, self.bias)
        y = self.activation(z)
        self._saved = (x, z, y)
        return y

    def backward(self, dy, need_dx=True, wrt_preactivation=False):
        x, z, y = self._saved
        dy = dy.reshape(y.shape)
        dz = dy if wrt_preactivation else activations.backward(
            self.activation, z, y, dy, f"{self.class_name} layer '{self.name}'")
        dk, dx = depthwise_conv2d_backward(x, self.depthwise, dz, self.strides, self.padding,
                                           self.dilation, need_dx)
        grads = [dk.reshape(self.weights[0].shape)]
        if self.bias is not None:
            grads.append(dz.sum(axis=(0, 1, 2)))
        return dx, grads


class Conv1D(Conv2D):
    """Conv1D on (N, L, C) via conv2d with H=1; supports 'causal' padding
    (left padding of (k-1)*dilation)."""

    absorbs_following = False

    spatial = 1

    def __init__(self, config, weights, class_name=None):
        cfg = dict(config)
        self.causal = cfg.get("padding") == "causal"
        if self.causal:
            cfg["padding"] = "valid"
        super().__init__(cfg, weights, class_name)
        self.config = config  # the file's config (set_weights rebuilds the layer from it)
        self.kernel = self.kernel[None]  # (1, k, C, F)
        self.strides = (1,) + self.sizes("strides", 1, 1)
        self.dilation = (1,) + self.sizes("dilation_rate", 1, 1)
        self.check_config_sizes()

    def convolve(self, x):
        self.check_rank(x, 3, "sequence batch (N, L, C)")
        self.check_last_dim(x, self.kernel.shape[2])
        x4, explicit = self._as_image(x)
        ho, wo, pads = conv_geometry(x4.shape, self.kernel.shape, self.strides, self.padding,
                                     self.dilation, explicit)
        self.check_sizes(x4.shape, pads, ho, wo)
        if self.causal:
            left = (self.kernel.shape[1] - 1) * self.dilation[1]
            y = conv2d(x4, self.kernel, self.strides, "valid", self.dilation,
                       explicit_pads=((0, 0), (left, 0)))
        else:
            y = conv2d(x4, self.kernel, self.strides, self.padding, self.dilation)
        return y[:, 0]

    def _as_image(self, x):
        self.check_rank(x, 3, "sequence batch (N, L, C)")
        explicit = ((0, 0), ((self.kernel.shape[1] - 1) * self.dilation[1], 0)) if self.causal else None
        return x[:, None], explicit


class SpatialConv:
    """What the convolutions that run their 1-D form as 2-D share: ``spatial`` (1 or 2)
    axes, Keras' spatial options, and the (N, L, C) <-> (N, 1, L, C) views. A class says
    how many channels its input has (``in_channels``)."""

    spatial = 2

    def spatial_options(self):
        """data_format, padding, strides and dilation_rate, as 2-D tuples."""
        self.require("data_format", ("channels_last", None), "channels_last")
        self.padding = self.require("padding", ("valid", "same"), "valid")
        n = self.spatial
        self.strides = (1,) * (2 - n) + self.sizes("strides", n, 1)
        self.dilation = (1,) * (2 - n) + self.sizes("dilation_rate", n, 1)

    def _as_image(self, x):
        if self.spatial == 2:
            self.check_rank(x, 4, "image batch (N, H, W, C)")
            x4 = x
        else:
            self.check_rank(x, 3, "sequence batch (N, L, C)")
            x4 = x[:, None]
        self.check_last_dim(x4, self.in_channels)
        return x4

    def _from_image(self, y):
        return y if self.spatial == 2 else y[:, 0]
