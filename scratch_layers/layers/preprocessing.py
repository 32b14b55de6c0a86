"""Preprocessing layers that compute at inference: ``Rescaling``, ``Normalization``."""
import numpy as np

from ..errors import InputError, ModelFileError
from ..ops import KERAS_EPSILON
from .layer import Layer, axis_list


class Rescaling(Layer):
    """y = x * scale + offset."""

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.scale = np.asarray(config.get("scale", 1.0), dtype=np.float64)
        self.offset = np.asarray(config.get("offset", 0.0), dtype=np.float64)
        if isinstance(config.get("scale"), dict) or isinstance(config.get("offset"), dict):
            raise self.unsupported("scale/offset", "tensor")

    def forward(self, x, mask=None):
        return x * self.scale + self.offset

    def forward_train(self, x, mask, ctx):
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy * self.scale, []


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
        keep = tuple(f"axis{i}" for i in range(len(axis_list(config.get("axis", [-1])))))
        return [keep, keep, ()]

    def __init__(self, config, weights, class_name=None):
        from_config = config.get("mean") is not None
        self.n_weights = 0 if from_config else 3
        super().__init__(config, weights, class_name)
        self.axis = axis_list(config.get("axis", [-1]))
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
