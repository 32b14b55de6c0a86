"""Transposed convolutions, Conv1DTranspose and Conv2DTranspose (forward and backward).

All channels_last. Forward and backward are vectorised over kernel offsets (a loop of
kh*kw strided slabs at most), never over pixels, samples or channels.
"""
import numpy as np

from .. import activations
from ..blas import rows_matmul, rows_matmul_tn
from ..errors import InputError, ModelFileError
from .bounds import check_sample_elements
from .conv import SpatialConv, im2col
from .layer import Layer, positive_sizes, same_padding

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


def check_transpose_sizes(layer, sizes, k_size, strides, padding, output_padding, dilation, filters):
    """Check, before allocating either, the sample of a transposed convolution's output for
    an input of spatial ``sizes`` and of the buffer its kernel offsets' slabs are added into
    (per axis the larger of the output with its pads and the slabs' reach,
    (k-1)*d + (size-1)*s + 1), against
    :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS`
    (:func:`~scratch_layers.layers.bounds.check_sample_elements`). For ``sizes`` all 1 it
    is a lower bound from the config alone: a huge stride, kernel dilation or
    output_padding shows at build time."""
    op = (None,) * len(sizes) if output_padding is None else output_padding
    outs = [conv_transpose_length(size, k, s, padding, p, d)
            for size, k, s, p, d in zip(sizes, k_size, strides, op, dilation)]
    check_sample_elements(layer, outs + [filters])
    if min(outs) <= 0:
        return  # the geometry refuses it
    pads = [conv_transpose_pads(size, out, k, s, padding, d)
            for size, out, k, s, d in zip(sizes, outs, k_size, strides, dilation)]
    reach = [max(out + p0 + p1, (k - 1) * d + (size - 1) * s + 1)
             for size, out, (p0, p1), k, s, d in zip(sizes, outs, pads, k_size, strides, dilation)]
    check_sample_elements(layer, reach + [filters], "padded output")


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
    """col2im: the adjoint of :func:`scratch_layers.layers.conv.im2col`. ``cols`` (N, H, W, kh, kw, F)
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
        self._check_sizes((1, 1))  # a 1x1 input's output: a lower bound, from the config alone

    def _check_sizes(self, hw):
        check_transpose_sizes(self, hw, self.kernel.shape[:2], self.strides, self.padding,
                              self.output_padding, self.dilation, self.kernel.shape[2])

    @property
    def in_channels(self):
        return self.kernel.shape[3]

    def _z(self, x4):
        self._check_sizes(x4.shape[1:3])
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
