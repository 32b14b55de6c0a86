"""Depthwise and separable convolutions (1-D and 2-D)."""
import copy

import numpy as np

from .. import activations
from ..blas import rows_matmul, rows_matmul_tn
from ..errors import ModelFileError
from ..profiling import gemm
from .bounds import check_sample_elements
from .conv import (
    AbsorbsAffine,
    SpatialConv,
    check_padded,
    check_reach,
    depthwise_conv2d,
    depthwise_conv2d_backward,
    depthwise_geometry,
)
from .layer import Layer, positive_sizes


class PaddedRowsCap:
    """The size check of the depthwise pass: its tile buffer (see :func:`depthwise_conv2d`)
    holds zero-padded input rows with C*M channels, which 'same' padding with a huge
    dilation would make arbitrarily large. Checked against
    :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS` from the config when the
    layer is built (a 1x1 input padded to the kernel's reach) and on the actual shape
    once per call (when the input is taken as an image), before allocating, with the
    output (``out_channels`` per pixel). ``depthwise_shape``: the (kh, kw, C, M) kernel's
    shape."""

    def check_config_sizes(self):
        kh, kw, c, m = self.depthwise_shape
        if self.padding == "same":
            check_reach(self, (kh, kw), self.dilation, c * m)

    def _as_image(self, x):
        x4 = super()._as_image(x)
        k = self.depthwise_shape
        ho, wo, pads = depthwise_geometry(x4.shape, k, self.strides, self.padding, self.dilation)
        check_padded(self, x4.shape, pads, k[2] * k[3])
        check_sample_elements(self, (ho, wo, self.out_channels))
        return x4


class DepthwiseConv2D(PaddedRowsCap, AbsorbsAffine, SpatialConv, Layer):
    """Depthwise conv: each input channel convolved with its own depth_multiplier filters.
    kernel (kh, kw, C, M) -> output channels ordered c*M + m (as TF); see
    :func:`depthwise_conv2d`. Backward: :func:`depthwise_conv2d_backward`."""

    spatial = 2
    output_channel_dims = 2

    @classmethod
    def weight_shapes(cls, config):
        """kernel (kh, kw, in, depth_multiplier) [+ bias (in * depth_multiplier,)]."""
        where = f"{cls.__name__} layer '{config.get('name')}'"
        k = positive_sizes(config["kernel_size"], cls.spatial, where, "kernel_size")
        m = int(config.get("depth_multiplier", 1))
        return [k + ("in", m)] + ([("in*m",)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 2 if self.use_bias else 1
        super().__init__(config, weights, class_name)
        self.spatial_options()
        self.kernel = weights[0] if self.spatial == 2 else weights[0][None]
        self.bias = weights[1] if self.use_bias else None
        if self.bias is not None and self.bias.shape != (self.kernel.shape[2] * self.kernel.shape[3],):
            raise ModelFileError(f"{self.class_name} layer '{self.name}': bias shape {self.bias.shape} "
                                 f"does not fit kernel shape {self.kernel.shape}")
        self.activation = activations.get(config.get("activation"), f"{self.class_name} '{self.name}'")
        self.check_config_sizes()

    @property
    def in_channels(self):
        return self.kernel.shape[2]

    @property
    def depthwise_shape(self):
        return self.kernel.shape

    @property
    def out_channels(self):
        return self.kernel.shape[2] * self.kernel.shape[3]

    def absorb_zero_padding(self, pads):
        """This layer run on its input zero-padded by ``pads`` ((top, bottom), (left, right),
        a ZeroPadding2D before it, as MobileNetV2 writes its strided depthwise convolutions)
        as one layer: its tiles copy their input rows into a zeroed buffer anyway, so the
        padding costs nothing; None unless this layer pads 'valid' (TF's 'same' pads depend
        on the padded size)."""
        if self.spatial != 2 or self.padding != "valid":
            return None
        fused = copy.copy(self)
        fused.padding = tuple(tuple(int(v) for v in p) for p in pads)
        return fused

    def workspace_per_sample(self, output_size):
        """Nothing per sample: the tiles' input buffer has a fixed size (see
        :func:`depthwise_conv2d`); the im2col estimate of a Conv2D would be C times the
        output and shrink predict's chunks to one image."""
        return 0

    def forward(self, x, mask=None):
        """One tiled pass: taps, bias and (a relu or clipped relu absorbed from the next
        layer, see :class:`AbsorbsAffine`) activation, see :func:`depthwise_conv2d`."""
        y = depthwise_conv2d(self._as_image(x), self.kernel, self.strides, self.padding,
                             self.dilation, self.bias, self.activation)
        return self._from_image(y)

    def forward_train(self, x, mask, ctx):
        x4 = self._as_image(x)
        z = depthwise_conv2d(x4, self.kernel, self.strides, self.padding, self.dilation, self.bias)
        y = self.activation(z)
        self._saved = (x4, z, y)
        return self._from_image(y)

    def backward(self, dy, need_dx=True):
        """dz = act'(z) dy; db = sum dz; dK and dx from :func:`depthwise_conv2d_backward`."""
        x4, z, y = self._saved
        dz = activations.backward(self.activation, z, y, dy.reshape(y.shape),
                                  f"{self.class_name} layer '{self.name}'")
        dk, dx = depthwise_conv2d_backward(x4, self.kernel, dz, self.strides, self.padding,
                                           self.dilation, need_dx)
        grads = [dk.reshape(self.weights[0].shape)]
        if self.bias is not None:
            grads.append(dz.sum(axis=(0, 1, 2)))
        return (None if dx is None else self._from_image(dx)), grads


# ----------------------------------------------------------------------------- depthwise / separable

class DepthwiseConv1D(DepthwiseConv2D):
    """DepthwiseConv1D on (N, L, C): DepthwiseConv2D with H = 1; kernel (k, C, M)."""

    absorbs_following = False

    spatial = 1


class SeparableConv2D(PaddedRowsCap, SpatialConv, Layer):
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
        self.check_config_sizes()

    @property
    def in_channels(self):
        return self.depthwise_kernel.shape[2]

    @property
    def depthwise_shape(self):
        return self.depthwise_kernel.shape

    @property
    def out_channels(self):
        return self.pointwise.shape[1]

    def _u(self, x4):
        return depthwise_conv2d(x4, self.depthwise_kernel, self.strides, self.padding, self.dilation)

    def forward(self, x, mask=None):
        """Predict: the tiled depthwise pass, then one GEMM (:func:`profiling.gemm`)."""
        u = self._u(self._as_image(x))
        n, ho, wo, cm = u.shape
        z = gemm(u.reshape(-1, cm), self.pointwise)
        if self.bias is not None:
            z += self.bias
        return self._from_image(self.activation(z.reshape(n, ho, wo, -1)))

    def forward_train(self, x, mask, ctx):
        x4 = self._as_image(x)
        u = self._u(x4)
        n, ho, wo, cm = u.shape
        z = rows_matmul(u.reshape(-1, cm), self.pointwise, self.bias).reshape(n, ho, wo, -1)
        y = self.activation(z)
        self._saved = (x4, u, z, y)
        return self._from_image(y)

    def backward(self, dy, need_dx=True):
        x4, u, z, y = self._saved
        dz = activations.backward(self.activation, z, y, dy.reshape(y.shape),
                                  f"{self.class_name} layer '{self.name}'")
        f = dz.shape[-1]
        dz2 = dz.reshape(-1, f)
        u2 = u.reshape(-1, u.shape[-1])
        d_pointwise = rows_matmul_tn(u2, dz2).reshape(self.weights[1].shape)
        du = rows_matmul(dz2, np.ascontiguousarray(self.pointwise.T)).reshape(u.shape)
        d_depthwise, dx = depthwise_conv2d_backward(x4, self.depthwise_kernel, du, self.strides,
                                                    self.padding, self.dilation, need_dx)
        grads = [d_depthwise.reshape(self.weights[0].shape), d_pointwise]
        if self.bias is not None:
            grads.append(dz2.sum(axis=0))
        return (None if dx is None else self._from_image(dx)), grads


class SeparableConv1D(SeparableConv2D):
    """SeparableConv1D on (N, L, C): SeparableConv2D with H = 1; kernels (k, C, M), (1, C*M, F)."""

    spatial = 1
