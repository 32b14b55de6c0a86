"""The image layers of the course assignment: Conv2D, MaxPooling2D / AveragePooling2D,
BatchNormalization, ReLU, Flatten, Dense, plus the layers that are the identity at
inference (Dropout and the Random* augmentations) and Rescaling.

Every layer takes ``(x, mask)`` and returns ``(y, mask)``; images are channels-last
``(N, H, W, C)`` float64 arrays.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def relu(z):
    return np.maximum(z, 0.0)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softmax(z):
    """exp(z - max z) / sum exp(z - max z) over the last axis (shifting avoids overflow)."""
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


ACTIVATIONS = {"linear": lambda z: z, "relu": relu, "sigmoid": sigmoid, "tanh": np.tanh, "softmax": softmax}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise NotImplementedError(f"activation {name!r} is not implemented (have: {', '.join(ACTIVATIONS)})")
    return ACTIVATIONS[name]


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras' "same": output ceil(size / stride); the extra row goes after, not before."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2D:
    """y[n, i, j, f] = b[f] + sum_{a, b, c} x[n, i*s + a, j*s + b, c] W[a, b, c, f]:
    every (kh, kw, C) patch of the (padded) image times the kernel, as one matrix product."""

    def __init__(self, config, weights):
        if config.get("dilation_rate", [1, 1]) != [1, 1] or config.get("groups", 1) != 1 \
                or config.get("data_format", "channels_last") != "channels_last":
            raise NotImplementedError("Conv2D: only dilation 1, groups 1 and channels_last are implemented")
        self.kernel = weights[0]
        self.bias = weights[1] if config["use_bias"] else None
        self.strides = tuple(config["strides"])
        self.padding = config["padding"]
        self.activation = activation(config["activation"])

    def forward(self, x, mask=None):
        kh, kw, _, _ = self.kernel.shape
        sh, sw = self.strides
        if self.padding == "same":
            x = np.pad(x, ((0, 0), same_padding(x.shape[1], kh, sh), same_padding(x.shape[2], kw, sw), (0, 0)))
        patches = sliding_window_view(x, (kh, kw), axis=(1, 2))[:, ::sh, ::sw]   # (N, Ho, Wo, C, kh, kw)
        n, ho, wo = patches.shape[:3]
        # im2col: one row per output pixel, (kh, kw, C) in the kernel's order; then one matmul
        rows = patches.transpose(0, 1, 2, 4, 5, 3).reshape(n * ho * wo, -1)
        y = (rows @ self.kernel.reshape(rows.shape[1], -1)).reshape(n, ho, wo, -1)
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y), None


class Pooling2D:
    """Max or mean over each (ph, pw) window, windows ``strides`` apart ("valid" padding)."""

    def __init__(self, config, weights, reduce):
        if config.get("padding", "valid") != "valid":
            raise NotImplementedError("pooling: only padding='valid' is implemented")
        self.size = tuple(config["pool_size"])
        self.strides = tuple(config.get("strides") or self.size)
        self.reduce = reduce

    def forward(self, x, mask=None):
        windows = sliding_window_view(x, self.size, axis=(1, 2))[:, ::self.strides[0], ::self.strides[1]]
        return self.reduce(windows, axis=(-2, -1)), None


class BatchNormalization:
    """Inference: y = gamma (x - moving_mean) / sqrt(moving_variance + epsilon) + beta."""

    def __init__(self, config, weights):
        if config.get("axis", -1) not in (-1, [-1]):
            raise NotImplementedError("BatchNormalization: only axis=-1 is implemented")
        weights = list(weights)
        self.gamma = weights.pop(0) if config.get("scale", True) else 1.0
        self.beta = weights.pop(0) if config.get("center", True) else 0.0
        self.mean, self.variance = weights
        self.epsilon = config["epsilon"]

    def forward(self, x, mask=None):
        return self.gamma * (x - self.mean) / np.sqrt(self.variance + self.epsilon) + self.beta, mask


class ReLU:
    def __init__(self, config, weights):
        if config.get("max_value") is not None or config.get("negative_slope", 0) or config.get("threshold", 0):
            raise NotImplementedError("ReLU: only max_value=None, negative_slope=0, threshold=0 are implemented")

    def forward(self, x, mask=None):
        return relu(x), mask


class Flatten:
    def __init__(self, config, weights):
        pass

    def forward(self, x, mask=None):
        return x.reshape(len(x), -1), None


class Dense:
    """y = activation(x W + b) on the last axis."""

    def __init__(self, config, weights):
        self.kernel = weights[0]
        self.bias = weights[1] if config["use_bias"] else None
        self.activation = activation(config["activation"])

    def forward(self, x, mask=None):
        y = x @ self.kernel
        if self.bias is not None:
            y = y + self.bias
        return self.activation(y), mask


class Identity:
    """Dropout, SpatialDropout and the Random* augmentations: active only in training."""

    def __init__(self, config, weights):
        pass

    def forward(self, x, mask=None):
        return x, mask


class Rescaling:
    """y = x * scale + offset."""

    def __init__(self, config, weights):
        self.scale, self.offset = np.asarray(config["scale"]), np.asarray(config["offset"])

    def forward(self, x, mask=None):
        return x * self.scale + self.offset, mask


LAYERS = {
    "Conv2D": Conv2D, "BatchNormalization": BatchNormalization, "ReLU": ReLU, "Flatten": Flatten,
    "Dense": Dense, "Rescaling": Rescaling,
    "MaxPooling2D": lambda c, w: Pooling2D(c, w, np.max),
    "AveragePooling2D": lambda c, w: Pooling2D(c, w, np.mean),
    **{name: Identity for name in ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "GaussianNoise",
                                   "RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
                                   "RandomContrast")},
}
