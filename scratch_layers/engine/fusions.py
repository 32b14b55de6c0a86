"""Fused kernels of predict's plan (see :mod:`scratch_layers.engine.executor`)."""
from __future__ import annotations

import copy

import numpy as np

from .. import activations
from ..layers.activation import Activation, ReLU
from ..layers.conv import Conv2D, conv_geometry
from ..layers.depthwise_conv import DepthwiseConv2D
from ..layers.normalization import BatchNormalization
from ..layers.pooling import pool2d

# im2col buffer per block of images in the fused Conv2D -> MaxPooling2D step: the patches
# stay in the CPU cache, while the chunk is sized by the activations held whole.
CONV_BLOCK_BYTES = 2 ** 21


def is_plain_relu(layer) -> bool:
    """A ReLU layer without options, or Activation("relu") (ResNet's blocks use the latter)."""
    if isinstance(layer, Activation):
        return layer.fn is activations.relu
    return (isinstance(layer, ReLU) and layer.max_value is None and layer.negative_slope == 0.0
            and layer.threshold == 0.0)


def foldable(conv, bn) -> bool:
    """Conv2D or DepthwiseConv2D (linear) followed by a per-channel BatchNormalization."""
    if not (type(conv) in (Conv2D, DepthwiseConv2D) and conv.activation is activations.linear
            and isinstance(bn, BatchNormalization) and bn.axis in (-1, 3)):
        return False
    channels = conv.kernel.shape[-1] * (conv.kernel.shape[2] if type(conv) is DepthwiseConv2D else 1)
    return bn.mul.shape == (channels,)


def fold_batchnorm(conv, bn, relu):
    """One convolution equal to conv(linear) -> BatchNormalization(channels) [-> ReLU]:
    ``conv(x, W) * mul + add == conv(x, W * mul) + add`` per output channel (a depthwise
    kernel (kh, kw, C, M) has output channel c*M + m)."""
    folded = copy.copy(conv)
    mul = bn.mul.reshape(conv.kernel.shape[2:]) if type(conv) is DepthwiseConv2D else bn.mul
    folded.kernel = np.ascontiguousarray(conv.kernel * mul)
    folded.bias = (conv.bias * bn.mul + bn.add) if conv.bias is not None else np.array(bn.add, copy=True)
    folded.activation = activations.relu if relu else activations.linear
    return folded


def conv_then_max_pool(conv, pool, x):
    """max_pool(conv(x)) without bias and activation, the convolution done in blocks of
    whole images whose im2col buffer takes at most ``CONV_BLOCK_BYTES``: each block's
    patch buffer and matmul output stay in the CPU cache however large the chunk is."""
    def block(xs):
        return pool2d(conv._conv(xs), pool.pool, pool.strides, pool.padding, "max")
    conv.check_rank(x, 4, "image batch (N, H, W, C)")
    ho, wo, _ = conv_geometry(x.shape, conv.kernel.shape, conv.strides, conv.padding, conv.dilation)
    per = max(1, CONV_BLOCK_BYTES // (ho * wo * conv.kernel[..., 0].size * x.dtype.itemsize))
    if len(x) <= per:
        return block(x)
    first = block(x[:per])
    out = np.empty((len(x),) + first.shape[1:], first.dtype)
    out[:per] = first
    for s in range(per, len(x), per):
        out[s:s + per] = block(x[s:s + per])
    return out
