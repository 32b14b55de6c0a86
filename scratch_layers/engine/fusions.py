"""Fusions of two layers that predict's plan runs as one step, found by what the layers
declare (no class is named here). A layer's own ``absorb`` covers the folds that give one
layer of its kind (Conv2D -> BatchNormalization -> ReLU); the pairs below give a step of
their own:

* Conv2D(relu/linear) -> MaxPooling2D pools the raw convolution first and adds bias and
  activation afterwards: ``max(x + b) = max(x) + b`` and ``relu(max(x)) = max(relu(x))``
  hold exactly in floating point (monotonic ops), and the bias/relu passes touch 4x less
  data. The convolution runs in blocks of images, so only the pooled output is held whole.
* Embedding -> RNN folds the table into the RNN's input projection:
  ``(E @ W + b)[ids] == E[ids] @ W + b``.
"""
from __future__ import annotations

import numpy as np

from .. import activations
from ..layers.conv import conv_geometry
from ..layers.pooling import pool2d, tf_max_floor

# im2col buffer per block of images in the fused Conv2D -> MaxPooling2D step: the patches
# stay in the CPU cache, while the chunk is sized by the activations held whole.
CONV_BLOCK_BYTES = 2 ** 21


class FusedPair:
    """Two layers run as one step: named after the first, absorbing nothing further."""

    multi_input = False

    def __init__(self, first, second):
        self.first, self.second = first, second
        self.name, self.class_name = first.name, f"{first.class_name}+{second.class_name}"

    def absorb(self, following):
        return None

    def workspace_per_sample(self, output_size):
        return 0


class ConvMaxPool(FusedPair):
    """max_pool(activation(conv(x) + b)) as activation(max_pool(conv(x)) + b)."""

    def __init__(self, conv, pool):
        super().__init__(conv, pool)
        self.conv = conv
        self.pool, self.strides, self.padding = pool.max_pool_window()

    def forward(self, x, mask=None):
        return self.pooled_convolution(x, self.finish)

    def finish(self, y):
        """activation(y + b) in place on a block of pooled convolution outputs."""
        relu = self.conv.activation is activations.relu
        if not relu:
            tf_max_floor(y)
        if self.conv.bias is not None:
            y += self.conv.bias
        if relu:  # fmax: a window of only NaN gives relu(lowest + b) = 0, as in Keras
            np.fmax(y, 0.0, out=y)
        return y

    def compute_mask(self, x, mask):
        return None

    def pooled_convolution(self, x, finish=None):
        """max_pool(conv(x)) without bias and activation (or with ``finish`` applied to
        each block), the convolution done in blocks of whole images whose im2col buffer
        takes at most ``CONV_BLOCK_BYTES``: each block's patch buffer, matmul output and
        pooled output stay in the CPU cache however large the chunk is."""
        conv = self.conv

        def block(xs):
            y = conv.convolve_max_pooled(xs, self.pool, self.strides)
            if y is None:
                y = pool2d(conv.convolve(xs), self.pool, self.strides, self.padding, "max")
            return finish(y) if finish is not None else y
        conv.check_rank(x, 4, "image batch (N, H, W, C)")
        ho, wo, _ = conv_geometry(x.shape, conv.kernel.shape, conv.strides, conv.padding, conv.dilation,
                                  conv.explicit_pads)
        per = max(1, CONV_BLOCK_BYTES // (ho * wo * conv.kernel[..., 0].size * x.dtype.itemsize))
        if len(x) <= per:
            return block(x)
        first = block(x[:per])
        out = np.empty((len(x),) + first.shape[1:], first.dtype)
        out[:per] = first
        for s in range(per, len(x), per):
            out[s:s + per] = block(x[s:s + per])
        return out


class EmbeddingRNN(FusedPair):
    """An Embedding read only by a recurrent layer: the RNN projects the table once."""

    def forward(self, x, mask=None):
        ids = self.first.check_ids(x)
        return self.second.forward_ids(ids, self.first.compute_mask(ids, None), self.first.table)

    def compute_mask(self, x, mask):
        return self.second.compute_mask(None, self.first.compute_mask(x, None))


def fuse_pair(layer, following):
    """The fused step of ``layer`` then ``following``, or None."""
    if (getattr(layer, "max_pool_commutes", False) and following.max_pool_window() is not None
            and layer.activation in (activations.relu, activations.linear)):
        return ConvMaxPool(layer, following)
    if hasattr(layer, "check_ids") and hasattr(following, "forward_ids"):
        return EmbeddingRNN(layer, following)
    return None
