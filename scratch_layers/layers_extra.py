"""Activations-as-layers, preprocessing and shape layers the graphs need (forward and backward):
PReLU, Normalization, RepeatVector, UnitNormalization and ConvNeXt's LayerScale."""
import numpy as np

from .base import Layer
from .errors import InputError, ModelFileError

# keras.backend.epsilon(): Normalization's floor on the standard deviation.
KERAS_EPSILON = 1e-7


def _axis_list(value):
    """A Keras ``axis`` config (int, list, or None/[] for "no axis") as a list of ints."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(a) for a in value]
    return [int(value)]


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
        self.shared_axes = _axis_list(config.get("shared_axes"))

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


class Normalization(Layer):
    """Keras' ``Normalization`` preprocessing layer (keras/src/layers/preprocessing/normalization.py):
    y = (x - mean) / max(sqrt(variance), eps), eps = ``keras.backend.epsilon()`` = 1e-7;
    with ``invert=True`` y = mean + x max(sqrt(variance), eps).

    ``mean``/``variance`` hold one value per index of the kept ``axis`` (all other axes,
    the batch included, share them; ``axis=None`` saves ``[]``: one scalar). They come
    from the file's weights ``mean, variance, count`` (after ``adapt()``; count is unused
    at inference) or, when given to the constructor, from the config (a scalar, or an
    array aligned right to left with the kept axes; rounded to float32 as Keras does). Nothing is trainable; backward:
    dx = dy / std (dy std with invert)."""

    @classmethod
    def weight_shapes(cls, config):
        """mean and variance (one size per kept axis) and the scalar count; none when the
        config holds mean/variance."""
        if config.get("mean") is not None:
            return []
        keep = tuple(f"axis{i}" for i in range(len(_axis_list(config.get("axis", [-1])))))
        return [keep, keep, ()]

    def __init__(self, config, weights, class_name=None):
        from_config = config.get("mean") is not None
        self.n_weights = 0 if from_config else 3
        super().__init__(config, weights, class_name)
        self.axis = _axis_list(config.get("axis", [-1]))
        self.invert = bool(config.get("invert", False))
        if from_config:
            if config.get("variance") is None:
                raise ModelFileError(f"Normalization layer '{self.name}': the config has a mean "
                                     "but no variance; the file was not written by Keras")
            # Keras makes a tensor of the Python numbers first, which TensorFlow builds in
            # float32: its statistics are the config's values rounded to float32, in a
            # float64 model too (0.7 -> 0.699999988...).
            mean = np.asarray(config["mean"], dtype=np.float32).astype(np.float64)
            var = np.asarray(config["variance"], dtype=np.float32).astype(np.float64)
            if mean.shape != var.shape or mean.ndim > len(self.axis):
                raise ModelFileError(f"Normalization layer '{self.name}': mean of shape "
                                     f"{mean.shape} and variance of shape {var.shape} do not fit "
                                     f"axis={self.axis}")
        else:
            mean, var, _count = weights
        self.mean = mean
        self.std = np.maximum(np.sqrt(var), KERAS_EPSILON)

    def trainable_flags(self):
        return [False] * len(self.weights)

    def _broadcast(self, a, x):
        """``a`` (mean or std) reshaped to broadcast against ``x`` as Keras does: its
        trailing axes go to the kept axes, counted from the last one."""
        keep = sorted(d % x.ndim for d in self.axis)
        if any(d < -x.ndim or d >= x.ndim for d in self.axis):
            raise InputError(f"Normalization layer '{self.name}': axis={self.axis} does not fit "
                             f"input of shape {x.shape}")
        shape = [1] * x.ndim
        for i in range(1, a.ndim + 1):
            shape[keep[-i]] = a.shape[-i]
        if a.ndim and any(shape[d] not in (1, x.shape[d]) for d in keep):
            raise InputError(f"Normalization layer '{self.name}': mean/variance of shape "
                             f"{a.shape} do not fit input of shape {x.shape} (axis={self.axis})")
        return a.reshape(shape)

    def forward(self, x, mask=None):
        mean, std = self._broadcast(self.mean, x), self._broadcast(self.std, x)
        if self.invert:
            return mean + x * std
        return (x - mean) / std

    def forward_train(self, x, mask, ctx):
        self._std = self._broadcast(self.std, x)
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        grads = [None] * len(self.weights)
        if not need_dx:
            return None, grads
        return (dy * self._std if self.invert else dy / self._std), grads


class RepeatVector(Layer):
    """(N, F) -> (N, n, F), the input repeated n times; backward sums dy over the n copies."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.n = int(config["n"])
        if self.n < 0:
            raise ModelFileError(f"RepeatVector layer '{self.name}': n={self.n} is negative")

    def forward(self, x, mask=None):
        self.check_rank(x, 2)
        return np.repeat(x[:, None, :], self.n, axis=1)

    def forward_train(self, x, mask, ctx):
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy.sum(axis=1), []


class UnitNormalization(Layer):
    """y = x inv, inv = min(1 / sqrt(s), 1e12), s = sum(x^2) over ``axis``
    (``ops.normalize(order=2, epsilon=1e-12)``). Backward: dx = inv dy - inv^3 x sum(dy x)
    where 1/sqrt(s) <= 1e12 (TF's Minimum passes the first argument on ties), dx = inv dy
    where the floor is hit."""

    supports_masking = True
    EPSILON = 1e-12

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.axis = _axis_list(config.get("axis", -1))

    def _inv(self, x):
        axes = tuple(a % x.ndim for a in self.axis)
        with np.errstate(divide="ignore"):
            rs = 1.0 / np.sqrt(np.sum(x * x, axis=axes, keepdims=True))
        return np.minimum(rs, 1.0 / self.EPSILON), rs <= 1.0 / self.EPSILON, axes

    def forward(self, x, mask=None):
        return x * self._inv(x)[0]

    def forward_train(self, x, mask, ctx):
        inv, free, axes = self._inv(x)
        self._saved = (x, inv, free, axes)
        return x * inv

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None, []
        x, inv, free, axes = self._saved
        return inv * dy - np.where(free, inv ** 3, 0.0) * x * np.sum(dy * x, axis=axes, keepdims=True), []


class LayerScale(Layer):
    """ConvNeXt's ``LayerScale`` (keras/src/applications/convnext.py; saved as class_name
    "LayerScale", module "keras.src.applications.convnext"): y = x gamma, gamma of shape
    (projection_dim,) on the last axis. Backward: dx = dy gamma, dgamma = sum of dy x over
    the other axes."""

    n_weights = 1
    supports_masking = False

    @classmethod
    def weight_shapes(cls, config):
        """gamma (projection_dim,)."""
        return [(int(config["projection_dim"]),)]

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.gamma = weights[0]

    def forward(self, x, mask=None):
        self.check_last_dim(x, self.gamma.shape[0])
        return x * self.gamma

    def forward_train(self, x, mask, ctx):
        self._x = x
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        x = self._x
        dgamma = (dy * x).reshape(-1, x.shape[-1]).sum(axis=0)
        return (dy * self.gamma if need_dx else None), [dgamma]


LAYERS = {  # Keras class name -> constructor, merged into registry.REGISTRY
    "PReLU": PReLU,
    "Normalization": Normalization,
    "RepeatVector": RepeatVector,
    "UnitNormalization": UnitNormalization,
    "LayerScale": LayerScale,
}
