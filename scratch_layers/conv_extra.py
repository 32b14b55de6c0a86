"""Transposed, separable and depthwise-multiplier convolutions, cropping and upsampling (forward and backward).

All channels_last. Forward and backward are vectorised over kernel offsets (a loop of
kh*kw strided slabs at most), never over pixels, samples or channels.
"""
import numpy as np

from . import activations
from ._blas import rows_matmul, rows_matmul_tn
from .base import Layer, positive_sizes, same_padding
from .conv import (DepthwiseConv2D, SpatialConv, depthwise_conv2d, depthwise_conv2d_backward, im2col,
                   pad2d)
from .errors import InputError, ModelFileError


# ----------------------------------------------------------------------------- transposed convolution

def conv_transpose_length(size, k, stride, padding, output_padding, dilation):
    """Keras' output length of a transposed convolution along one axis
    (``backend_utils._get_output_shape_given_tf_padding``), with k_eff = (k-1)*d + 1:
    valid: (size-1)*s + k_eff + op, op defaulting to max(k_eff, s) - k_eff;
    same: size*s without output_padding, else (size-1)*s + k_eff % 2 + op."""
    k_eff = (k - 1) * dilation + 1
    if padding == "valid":
        op = max(k_eff, stride) - k_eff if output_padding is None else output_padding
        return (size - 1) * stride + k_eff + op
    if output_padding is None:
        return size * stride
    return (size - 1) * stride + k_eff % 2 + output_padding


def conv_transpose_pads(size, out, k, stride, padding, dilation):
    """The pads of the forward convolution (output length ``out`` -> ``size``) whose
    adjoint the transposed convolution is, as TF's Conv2DBackpropInput derives them:
    'same' pads as a TF 'same' conv of length ``out``, 'valid' none."""
    if padding == "valid":
        return 0, 0
    n, before, after = same_padding(out, k, stride, dilation)
    if n != size:  # Keras' shape rule always gives ceil(out / s) == size
        raise InputError(f"transposed convolution: output length {out} does not map back to "
                         f"input length {size} with stride {stride}")
    return before, after


def conv_transpose_geometry(x_shape, k_shape, strides, padding, output_padding, dilation):
    """``((ho, wo), ((pt, pb), (pl, pr)))`` of a 2-D transposed convolution of an
    (N, H, W, C) input with a (kh, kw, F, C) kernel."""
    _, h, w, _ = x_shape
    kh, kw = k_shape[:2]
    op = (None, None) if output_padding is None else output_padding
    ho = conv_transpose_length(h, kh, strides[0], padding, op[0], dilation[0])
    wo = conv_transpose_length(w, kw, strides[1], padding, op[1], dilation[1])
    if ho <= 0 or wo <= 0:
        raise InputError(f"transposed convolution of spatial size {(h, w)} gives output {(ho, wo)}")
    pads = (conv_transpose_pads(h, ho, kh, strides[0], padding, dilation[0]),
            conv_transpose_pads(w, wo, kw, strides[1], padding, dilation[1]))
    return (ho, wo), pads


def scatter_patches(cols, out_hw, strides, dilation, pads):
    """col2im: the adjoint of :func:`scratch_layers.conv.im2col`. ``cols`` (N, H, W, kh, kw, F)
    -> (N, Ho, Wo, F) with out[n, i*sh + a*dh - pt, j*sw + b*dw - pl] += cols[n, i, j, a, b];
    cells that land in the pads are dropped. One strided slab add per kernel offset (the
    cells of one slab are distinct, so ``+=`` is exact); no loop over pixels or samples."""
    n, h, w, kh, kw, f = cols.shape
    ho, wo = out_hw
    (pt, pb), (pl, pr) = pads
    sh, sw = strides
    dh, dw = dilation
    rows = max(ho + pt + pb, (kh - 1) * dh + (h - 1) * sh + 1)
    cols_ = max(wo + pl + pr, (kw - 1) * dw + (w - 1) * sw + 1)
    out = np.zeros((n, rows, cols_, f), cols.dtype)
    for a in range(kh):
        for b in range(kw):
            out[:, a * dh:a * dh + (h - 1) * sh + 1:sh, b * dw:b * dw + (w - 1) * sw + 1:sw] += \
                cols[:, :, :, a, b]
    return out[:, pt:pt + ho, pl:pl + wo]


def conv_transpose2d(x, kernel, strides, padding, output_padding=None, dilation=(1, 1)):
    """Keras/TF 2-D transposed convolution (the gradient of conv2d w.r.t. its input).

    x: (N, H, W, C); kernel: (kh, kw, F, C) -> (N, Ho, Wo, F) with
    y[n, i*sh + a*dh - pt, j*sw + b*dw - pl, f] += sum_c x[n, i, j, c] * kernel[a, b, f, c],
    (Ho, Wo) from :func:`conv_transpose_length`, (pt, pl) from :func:`conv_transpose_pads`.
    One matmul x @ K^T (all offsets at once), then :func:`scatter_patches`."""
    n, h, w, c = x.shape
    kh, kw, f, _ = kernel.shape
    out_hw, pads = conv_transpose_geometry(x.shape, kernel.shape, strides, padding,
                                           output_padding, dilation)
    k_t = np.ascontiguousarray(kernel.transpose(3, 0, 1, 2).reshape(c, kh * kw * f))
    cols = rows_matmul(x.reshape(-1, c), k_t).reshape(n, h, w, kh, kw, f)
    return scatter_patches(cols, out_hw, strides, dilation, pads)


class Conv2DTranspose(SpatialConv, Layer):
    """Conv2DTranspose: y = activation(conv_transpose2d(x, kernel) + bias), channels_last.
    kernel (kh, kw, filters, in_channels). Backward: the input gradient of a transposed
    convolution is the ordinary strided convolution of dy with the same kernel,
    dx = im2col(dy) @ K.reshape(kh*kw*F, C), and dK = im2col(dy)^T @ x."""

    spatial = 2

    @classmethod
    def weight_shapes(cls, config):
        """kernel (*kernel_size, filters, in) [+ bias (filters,)]."""
        where = f"{cls.__name__} layer '{config.get('name')}'"
        k = positive_sizes(config["kernel_size"], cls.spatial, where, "kernel_size")
        f = int(config["filters"])
        return [k + (f, "in")] + ([(f,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 2 if self.use_bias else 1
        super().__init__(config, weights, class_name)
        self.spatial_options()
        where = f"{self.class_name} layer '{self.name}'"
        n = self.spatial
        op = config.get("output_padding")
        if op is None:
            self.output_padding = None
        else:
            op = positive_sizes([v + 1 for v in _as_list(op, n)], n, where, "output_padding+1")
            self.output_padding = (0,) * (2 - n) + tuple(v - 1 for v in op)
            if any(p >= s for p, s in zip(self.output_padding, self.strides)):
                raise ModelFileError(f"{where}: output_padding={config.get('output_padding')!r} "
                                     f"must be smaller than strides={config.get('strides')!r}")
        if max(self.strides) > 1 and max(self.dilation) > 1:
            raise self.unsupported("strides+dilation_rate", (self.strides, self.dilation),
                                   "Keras itself rejects strides > 1 with dilation > 1")
        kernel = weights[0] if n == 2 else weights[0][None]
        self.kernel = np.ascontiguousarray(kernel)  # (kh, kw, F, C)
        self.bias = weights[1] if self.use_bias else None
        self.activation = activations.get(config.get("activation"), f"{self.class_name} '{self.name}'")

    @property
    def in_channels(self):
        return self.kernel.shape[3]

    def _z(self, x4):
        z = conv_transpose2d(x4, self.kernel, self.strides, self.padding, self.output_padding,
                             self.dilation)
        if self.bias is not None:
            z += self.bias
        return z

    def forward(self, x, mask=None):
        return self._from_image(self.activation(self._z(self._as_image(x))))

    def forward_train(self, x, mask, ctx):
        x4 = self._as_image(x)
        z = self._z(x4)
        y = self.activation(z)
        self._saved = (x4, z, y)
        return self._from_image(y)

    def backward(self, dy, need_dx=True):
        """dz = act'(z) dy; cols = im2col(dz) (N, H, W, kh, kw, F), the patches of the
        forward convolution whose adjoint this layer is; dK = (cols^T x) as (kh, kw, F, C);
        db = sum dz; dx = cols @ K."""
        x4, z, y = self._saved
        dy = dy.reshape(y.shape)
        dz = activations.backward(self.activation, z, y, dy, f"{self.class_name} layer '{self.name}'")
        n, h, w, c = x4.shape
        k = self.kernel
        _, pads = conv_transpose_geometry(x4.shape, k.shape, self.strides, self.padding,
                                          self.output_padding, self.dilation)
        cols = im2col(dz, k.shape, self.strides, self.dilation, pads, h, w)
        cols = cols.reshape(n * h * w, -1)
        dk = rows_matmul_tn(cols, x4.reshape(-1, c)).reshape(k.shape)
        grads = [dk if self.spatial == 2 else dk[0]]
        if self.bias is not None:
            grads.append(dz.sum(axis=(0, 1, 2)))
        if not need_dx:
            return None, grads
        dx = rows_matmul(cols, k.reshape(-1, c)).reshape(x4.shape)
        return self._from_image(dx), grads


class Conv1DTranspose(Conv2DTranspose):
    """Conv1DTranspose on (N, L, C): Conv2DTranspose with H = 1; kernel (k, filters, in)."""

    spatial = 1


def _as_list(v, n):
    if isinstance(v, (list, tuple)):
        return [int(i) for i in v] * (n if len(v) == 1 and n > 1 else 1)
    return [int(v)] * n


# ----------------------------------------------------------------------------- depthwise / separable

class DepthwiseConv1D(DepthwiseConv2D):
    """DepthwiseConv1D on (N, L, C): DepthwiseConv2D with H = 1; kernel (k, C, M)."""

    spatial = 1


class SeparableConv2D(SpatialConv, Layer):
    """SeparableConv2D: a depthwise convolution (kernel (kh, kw, C, M), output channel
    c*M + m) then a pointwise one (kernel (1, 1, C*M, F)):
    u = depthwise_conv2d(x, Kd); z = u @ Kp + b; y = activation(z).
    Backward: dKp = u^T dz, db = sum dz, du = dz Kp^T, then the depthwise backward."""

    spatial = 2

    @classmethod
    def weight_shapes(cls, config):
        """depthwise (*kernel_size, in, M), pointwise (*ones, in*M, filters) [+ bias (filters,)]."""
        where = f"{cls.__name__} layer '{config.get('name')}'"
        k = positive_sizes(config["kernel_size"], cls.spatial, where, "kernel_size")
        m = int(config.get("depth_multiplier", 1))
        f = int(config["filters"])
        return [k + ("in", m), (1,) * cls.spatial + ("in*m", f)] + \
            ([(f,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 3 if self.use_bias else 2
        super().__init__(config, weights, class_name)
        self.spatial_options()
        depthwise = weights[0] if self.spatial == 2 else weights[0][None]
        self.depthwise_kernel = depthwise  # (kh, kw, C, M)
        kh, kw, c, m = depthwise.shape
        if weights[1].shape[-2] != c * m:
            raise ModelFileError(f"{self.class_name} layer '{self.name}': pointwise kernel shape "
                                 f"{weights[1].shape} does not fit depthwise kernel {weights[0].shape}")
        self.pointwise = np.ascontiguousarray(weights[1].reshape(c * m, -1))  # (C*M, F)
        self.bias = weights[2] if self.use_bias else None
        self.activation = activations.get(config.get("activation"), f"{self.class_name} '{self.name}'")

    @property
    def in_channels(self):
        return self.depthwise_kernel.shape[2]

    def _z(self, x4):
        u, xp = depthwise_conv2d(x4, self.depthwise_kernel, self.strides, self.padding, self.dilation)
        n, ho, wo, cm = u.shape
        z = rows_matmul(u.reshape(-1, cm), self.pointwise, self.bias).reshape(n, ho, wo, -1)
        return z, u, xp

    def forward(self, x, mask=None):
        return self._from_image(self.activation(self._z(self._as_image(x))[0]))

    def forward_train(self, x, mask, ctx):
        x4 = self._as_image(x)
        z, u, xp = self._z(x4)
        y = self.activation(z)
        self._saved = (x4.shape, xp, u, z, y)
        return self._from_image(y)

    def backward(self, dy, need_dx=True):
        x_shape, xp, u, z, y = self._saved
        dz = activations.backward(self.activation, z, y, dy.reshape(y.shape),
                                  f"{self.class_name} layer '{self.name}'")
        f = dz.shape[-1]
        dz2 = dz.reshape(-1, f)
        u2 = u.reshape(-1, u.shape[-1])
        d_pointwise = rows_matmul_tn(u2, dz2).reshape(self.weights[1].shape)
        du = rows_matmul(dz2, np.ascontiguousarray(self.pointwise.T)).reshape(u.shape)
        d_depthwise, dx = depthwise_conv2d_backward(xp, x_shape, self.depthwise_kernel, du,
                                                    self.strides, self.padding, self.dilation,
                                                    need_dx)
        grads = [d_depthwise.reshape(self.weights[0].shape), d_pointwise]
        if self.bias is not None:
            grads.append(dz2.sum(axis=0))
        return (None if dx is None else self._from_image(dx)), grads


class SeparableConv1D(SeparableConv2D):
    """SeparableConv1D on (N, L, C): SeparableConv2D with H = 1; kernels (k, C, M), (1, C*M, F)."""

    spatial = 1


# ----------------------------------------------------------------------------- cropping / padding

def _pairs(value, n, where, option):
    """Keras' cropping/padding argument as n (before, after) pairs of non-negative ints:
    int -> same on every side; (a, b) with n = 1 -> ((a, b),); (a, b) with n = 2 ->
    ((a, a), (b, b)); ((a, b), (c, d)) as given."""
    try:
        if isinstance(value, (int, float)):
            pairs = [(int(value), int(value))] * n
        elif n == 1:
            pairs = [tuple(int(v) for v in value)]
        elif all(isinstance(v, (int, float)) for v in value):
            pairs = [(int(v), int(v)) for v in value]
        else:
            pairs = [tuple(int(v) for v in p) for p in value]
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or len(pairs) != n or any(len(p) != 2 or min(p) < 0 for p in pairs):
        raise ModelFileError(f"{where}: {option}={value!r} must be {n} pair(s) of non-negative "
                             "integers; the file was not written by Keras or is corrupt")
    return tuple(pairs)


class Cropping2D(Layer):
    """Cropping2D: y = x[:, t:H-b, l:W-r]. Backward: dy placed back, zeros in the crop."""

    spatial = 2

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.crops = _pairs(config.get("cropping", 1 if self.spatial == 1 else ((0, 0), (0, 0))),
                            self.spatial, f"{self.class_name} layer '{self.name}'", "cropping")

    def _window(self, x):
        self.check_rank(x, self.spatial + 2)
        index = [slice(None)]
        for (before, after), size in zip(self.crops, x.shape[1:1 + self.spatial]):
            if before + after >= size:
                raise InputError(f"{self.class_name} layer '{self.name}': cropping {self.crops} "
                                 f"leaves nothing of input shape {x.shape}")
            index.append(slice(before, size - after))
        return tuple(index)

    def forward(self, x, mask=None):
        return x[self._window(x)]

    def forward_train(self, x, mask, ctx):
        self._saved = (x.shape, self._window(x))
        return x[self._saved[1]]

    def backward(self, dy, need_dx=True):
        shape, window = self._saved
        dx = np.zeros(shape, dy.dtype)
        dx[window] = dy
        return dx, []


class Cropping1D(Cropping2D):
    """Cropping1D on (N, L, C): y = x[:, a:L-b] (``cropping`` (a, b), default (1, 1))."""

    spatial = 1


class ZeroPadding1D(Layer):
    """ZeroPadding1D on (N, L, C): ``padding`` zeros before and after the time axis.
    Backward: the middle of dy."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.pads = _pairs(config.get("padding", 1), 1, f"{self.class_name} layer '{self.name}'",
                           "padding")[0]

    def forward(self, x, mask=None):
        self.check_rank(x, 3, "sequence batch (N, L, C)")
        return pad2d(x[:, None], ((0, 0), self.pads))[:, 0]

    def forward_train(self, x, mask, ctx):
        self._length = x.shape[1]
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy[:, self.pads[0]:self.pads[0] + self._length], []


# ----------------------------------------------------------------------------- upsampling

def bilinear_weights(size, factor):
    """TF's ResizeBilinear with half-pixel centers along one axis, as a (size*factor, size)
    matrix A (out = A @ in): for output cell o, t = (o + 0.5) / factor - 0.5 computed in
    float32 like TF's kernel (scale = size / out as float32), lo = max(floor(t), 0),
    hi = min(ceil(t), size - 1), w = t - floor(t); A[o, lo] += 1 - w, A[o, hi] += w."""
    out = size * factor
    scale = np.float32(size) / np.float32(out)
    t = (np.arange(out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(t)
    lerp = (t - floor).astype(np.float64)
    lo = np.maximum(floor.astype(np.int64), 0)
    hi = np.minimum(np.ceil(t).astype(np.int64), size - 1)
    a = np.zeros((out, size))
    rows = np.arange(out)
    np.add.at(a, (rows, lo), 1.0 - lerp)
    np.add.at(a, (rows, hi), lerp)
    return a


class UpSampling2D(Layer):
    """UpSampling2D, ``size`` (fh, fw). nearest: y[:, i, j] = x[:, i // fh, j // fw] (repeat);
    bilinear: Keras' ops.image.resize (TF ResizeBilinear, half-pixel centers, no antialias),
    y = A_h x A_w^T per sample and channel with :func:`bilinear_weights`.
    Backward: nearest sums each fh x fw block of dy; bilinear dx = A_h^T dy A_w."""

    spatial = 2

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.size = self.sizes("size", self.spatial, 2)
        if self.spatial == 2:
            self.interpolation = self.require("interpolation", ("nearest", "bilinear"), "nearest")
        else:
            self.interpolation = "nearest"
        self._matrices = {}

    def _axis_matrix(self, size, factor, dtype):
        key = (size, factor, np.dtype(dtype).str)
        if key not in self._matrices:
            self._matrices[key] = bilinear_weights(size, factor).astype(dtype)
        return self._matrices[key]

    def forward(self, x, mask=None):
        self.check_rank(x, self.spatial + 2)
        if self.interpolation == "nearest":
            for axis, factor in enumerate(self.size, start=1):
                x = np.repeat(x, factor, axis=axis)
            return x
        _, h, w, _ = x.shape
        a_h = self._axis_matrix(h, self.size[0], x.dtype)
        a_w = self._axis_matrix(w, self.size[1], x.dtype)
        rows = np.einsum("oh,nhwc->nowc", a_h, x, optimize=True)
        return np.einsum("pw,nowc->nopc", a_w, rows, optimize=True)

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        n, c = self._shape[0], self._shape[-1]
        spatial = self._shape[1:-1]
        if self.interpolation == "nearest":
            split = [n]
            for size, factor in zip(spatial, self.size):
                split += [size, factor]
            dx = dy.reshape(split + [c]).sum(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
            return dx, []
        h, w = spatial
        a_h = self._axis_matrix(h, self.size[0], dy.dtype)
        a_w = self._axis_matrix(w, self.size[1], dy.dtype)
        rows = np.einsum("pw,nopc->nowc", a_w, dy, optimize=True)
        return np.einsum("oh,nowc->nhwc", a_h, rows, optimize=True), []


class UpSampling1D(UpSampling2D):
    """UpSampling1D on (N, L, C): each step repeated ``size`` times."""

    spatial = 1


LAYERS = {
    "Conv2DTranspose": Conv2DTranspose,
    "Conv1DTranspose": Conv1DTranspose,
    "DepthwiseConv1D": DepthwiseConv1D,
    "SeparableConv2D": SeparableConv2D,
    "SeparableConv1D": SeparableConv1D,
    "Cropping2D": Cropping2D,
    "Cropping1D": Cropping1D,
    "ZeroPadding1D": ZeroPadding1D,
    "UpSampling2D": UpSampling2D,
    "UpSampling1D": UpSampling1D,
}
