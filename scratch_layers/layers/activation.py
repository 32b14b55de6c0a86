"""Activation layers: ``Activation``, ``ReLU``, ``LeakyReLU``, ``ELU``, ``Softmax``, ``PReLU``,
and the in-place relu / clipped relu a convolution applies after absorbing one of them."""
import math

import numpy as np

from .. import activations
from ..blas import for_blocks
from ..errors import InputError
from .layer import KeepsInputOutput, Layer, axis_list


class ClippedReLU:
    """min(max(y, 0), ceiling) written INTO ``y``: the activation of a convolution that absorbed
    a following ReLU clipped at ``ceiling`` (:meth:`Layer.relu_ceiling`: ReLU(max_value=6),
    Activation('relu6')), applied to the convolution's own fresh output. Its values are those
    of :func:`activations.relu` with that max_value and of :func:`activations.relu6` (the
    same clip; NaN stays NaN)."""

    def __init__(self, ceiling):
        self.ceiling = float(ceiling)  # a Python float keeps float32 arrays float32

    def __call__(self, y):
        return np.clip(y, 0.0, self.ceiling, out=y)

    def __repr__(self):
        return f"ClippedReLU({self.ceiling})"


def _relu_in_place(y):
    return np.maximum(y, 0.0, out=y)


def _identity(y):
    return y


def in_place(activation):
    """``f(y) -> y`` that applies ``activation`` to ``y`` in place, for the activations a
    convolution applies within its own pass (linear, relu, :class:`ClippedReLU`); None for
    any other (apply it afterwards)."""
    if activation is activations.linear:
        return _identity
    if activation is activations.relu:
        return _relu_in_place
    if isinstance(activation, ClippedReLU):
        return activation
    return None


class ElementwiseBackward(KeepsInputOutput):
    """Mixin for weightless activation layers: backward applies :meth:`local_grad`
    (x, y, dy) -> dx to the kept input and output."""

    def backward(self, dy, need_dx=True):
        x, y = self._saved
        return self.local_grad(x, y, dy), []


class Activation(ElementwiseBackward, Layer):
    supports_masking = True

    def relu_ceiling(self):
        return {activations.relu: math.inf, activations.relu6: 6.0}.get(self.fn)

    def local_grad(self, x, y, dy):
        return activations.backward(self.fn, x, y, dy, f"Activation layer '{self.name}'")

    def backward(self, dy, need_dx=True, wrt_preactivation=False):
        return (dy, []) if wrt_preactivation else super().backward(dy, need_dx)

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.fn = activations.get(config.get("activation"), f"Activation '{self.name}'")

    def forward(self, x, mask=None):
        return self.fn(x)


class ReLU(ElementwiseBackward, Layer):
    """Keras ReLU layer: max_value, negative_slope and threshold options, exactly
    :func:`activations.relu`; backward :func:`activations.relu_grad`."""

    def _plain(self):
        return self.negative_slope == 0.0 and self.threshold == 0.0 and self.max_value is None

    def relu_ceiling(self):
        """Keras computes relu6 (max_value 6) or relu then clip(0, max_value): with
        negative_slope and threshold 0 both are min(max(x, 0), max_value)."""
        if self.negative_slope != 0.0 or self.threshold != 0.0:
            return None
        if self.max_value is None:
            return math.inf
        return self.max_value if self.max_value >= 0.0 else None

    def forward_train(self, x, mask, ctx):
        if not self._plain():
            return super().forward_train(x, mask, ctx)
        y = np.empty_like(x)  # max(x, 0) in row blocks on the worker threads
        for_blocks(lambda s: np.maximum(x[s], 0.0, out=y[s]), len(x), x.size)
        self._saved = (x, y)
        return y

    def local_grad(self, x, y, dy):
        if self._plain():  # y > 0 exactly where x > 0
            dx = np.empty_like(dy)
            for_blocks(lambda s: np.multiply(dy[s], y[s] > 0, out=dx[s]), len(dy), dy.size)
            return dx
        return activations.relu_grad(x, dy, self.negative_slope, self.max_value, self.threshold)

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        mv = config.get("max_value")
        self.max_value = None if mv is None else float(mv)
        self.negative_slope = float(config.get("negative_slope", 0.0))
        self.threshold = float(config.get("threshold", 0.0))

    def forward(self, x, mask=None):
        return activations.relu(x, self.negative_slope, self.max_value, self.threshold)


class LeakyReLU(ElementwiseBackward, Layer):
    supports_masking = True

    def local_grad(self, x, y, dy):
        return activations.leaky_relu_grad(x, dy, self.slope)

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.slope = float(config.get("negative_slope", config.get("alpha", 0.3)))

    def forward(self, x, mask=None):
        return activations.leaky_relu(x, self.slope)


class ELU(ElementwiseBackward, Layer):
    supports_masking = True

    def local_grad(self, x, y, dy):
        return np.where(x > 0, dy, dy * (y + self.alpha))

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.alpha = float(config.get("alpha", 1.0))

    def forward(self, x, mask=None):
        return activations.elu(x, self.alpha)


class Softmax(ElementwiseBackward, Layer):
    """Softmax layer. With a mask, Keras adds -1e9 to masked logits first; we do
    the same (only relevant when a mask reaches this layer)."""

    def local_grad(self, x, y, dy):
        return activations.softmax_grad(x, y, dy, axis=self.axis)

    def backward(self, dy, need_dx=True, wrt_preactivation=False):
        return (dy, []) if wrt_preactivation else super().backward(dy, need_dx)

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        axis = config.get("axis", -1)
        self.axis = tuple(axis) if isinstance(axis, list) else axis
        if isinstance(self.axis, tuple):
            raise self.unsupported("axis", axis, "only a single axis is supported")

    def forward(self, x, mask=None):
        if mask is not None and mask.ndim < x.ndim:
            x = x + (1.0 - mask[..., None].astype(x.dtype)) * -1e9
        return activations.softmax(x, axis=self.axis)


class PReLU(Layer):
    """y = x where x > 0, alpha x elsewhere (Keras: relu(x) - alpha relu(-x)).

    ``alpha`` has the input's non-batch shape with size 1 on every ``shared_axes`` axis.
    Backward (TF's ReluGrad passes neither branch at x = 0): dx = dy where x > 0,
    alpha dy where x < 0; dalpha = sum of dy min(x, 0) over the batch and shared axes."""

    n_weights = 1
    supports_masking = False

    @classmethod
    def weight_shapes(cls, config):
        """alpha: input_shape[1:] with 1 on the shared axes (the rank is not in the config)."""
        return [None]

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.alpha = weights[0]
        self.shared_axes = axis_list(config.get("shared_axes"))

    def _alpha_for(self, x):
        if x.ndim != self.alpha.ndim + 1 or any(
                a not in (1, d) for a, d in zip(self.alpha.shape, x.shape[1:])):
            raise InputError(f"PReLU layer '{self.name}': alpha of shape {self.alpha.shape} does "
                             f"not fit input of shape {x.shape}")
        return self.alpha[None]

    def forward(self, x, mask=None):
        return np.where(x > 0, x, self._alpha_for(x) * x)

    def forward_train(self, x, mask, ctx):
        if self.config.get("alpha_regularizer") or self.config.get("alpha_constraint"):
            raise self.no_backward("with alpha_regularizer/alpha_constraint (Keras adds a loss / "
                                   "projects alpha in training)")
        self._x = x
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        x = self._x
        alpha = self._alpha_for(x)
        shared = tuple(i + 1 for i, a in enumerate(self.alpha.shape) if a == 1 and x.shape[i + 1] != 1)
        dalpha = np.sum(dy * np.minimum(x, 0.0), axis=(0,) + shared, keepdims=True)[0]
        dx = np.where(x > 0, dy, np.where(x < 0, alpha * dy, 0.0)) if need_dx else None
        return dx, [dalpha.reshape(self.alpha.shape)]
