"""Core layers: Input, inference no-ops, Dense, activations, normalisation,
reshaping and Embedding."""
import numpy as np

from . import activations
from .base import Layer
from .errors import InputError


class InputLayer(Layer):
    """Keras ``InputLayer``: identity; its ``batch_shape``/``dtype`` describe the
    model input and are used by :class:`~scratch_layers.model.Model` to validate it."""

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        shape = config.get("batch_shape") or config.get("batch_input_shape")
        if shape is None and config.get("shape") is not None:
            shape = [None] + list(config["shape"])
        self.batch_shape = tuple(shape) if shape is not None else None
        self.dtype = config.get("dtype", "float32")
        if isinstance(self.dtype, dict):
            self.dtype = self.dtype.get("config", {}).get("name", "float32")
        if config.get("sparse") or config.get("ragged"):
            raise self.unsupported("sparse/ragged", True)

    def forward(self, x, mask=None):
        return x


class NoOp(Layer):
    """Layers that are the identity at inference: Dropout & friends (active only
    with ``training=True``), random augmentation layers, ActivityRegularization."""

    supports_masking = True

    def forward(self, x, mask=None):
        return x


class Dense(Layer):
    """y = activation(x @ kernel + bias); x may have any rank >= 2 (last axis contracted)."""

    supports_masking = True

    @classmethod
    def weight_shapes(cls, config):
        """kernel (in, units) [+ bias (units,)]."""
        u = int(config["units"])
        return [("in", u)] + ([(u,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 2 if self.use_bias else 1
        super().__init__(config, weights, class_name)
        if config.get("lora_rank"):
            raise self.unsupported("lora_rank", config.get("lora_rank"))
        if config.get("quantization_config") or config.get("dtype", {}) in ("int8", "float8", "int4"):
            raise self.unsupported("quantization", config.get("quantization_config"))
        self.kernel = weights[0]
        self.bias = weights[1] if self.use_bias else None
        self.activation = activations.get(config.get("activation"), f"Dense '{self.name}'")

    def forward(self, x, mask=None):
        self.check_last_dim(x, self.kernel.shape[0])
        y = np.matmul(x, self.kernel)
        if self.bias is not None:
            y += self.bias  # in place: y is a fresh array
        return self.activation(y)


class Activation(Layer):
    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.fn = activations.get(config.get("activation"), f"Activation '{self.name}'")

    def forward(self, x, mask=None):
        return self.fn(x)


class ReLU(Layer):
    """Keras ReLU layer: max_value, negative_slope and threshold options."""

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        mv = config.get("max_value")
        self.max_value = None if mv is None else float(mv)
        self.negative_slope = float(config.get("negative_slope", 0.0))
        self.threshold = float(config.get("threshold", 0.0))

    def forward(self, x, mask=None):
        return activations.relu(x, self.negative_slope, self.max_value, self.threshold)


class LeakyReLU(Layer):
    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.slope = float(config.get("negative_slope", config.get("alpha", 0.3)))

    def forward(self, x, mask=None):
        return activations.leaky_relu(x, self.slope)


class ELU(Layer):
    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.alpha = float(config.get("alpha", 1.0))

    def forward(self, x, mask=None):
        return activations.elu(x, self.alpha)


class Softmax(Layer):
    """Softmax layer. With a mask, Keras adds -1e9 to masked logits first; we do
    the same (only relevant when a mask reaches this layer)."""

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


class BatchNormalization(Layer):
    """Inference batch norm: y = (x - moving_mean) / sqrt(moving_var + epsilon) * gamma + beta
    along ``axis`` (gamma/beta absent when ``scale``/``center`` is False)."""

    supports_masking = True

    @classmethod
    def weight_shapes(cls, config):
        """[gamma], [beta], moving_mean, moving_variance: all (channels,)."""
        n = 2 + int(config.get("scale", True)) + int(config.get("center", True))
        return [("channels",)] * n

    def __init__(self, config, weights, class_name=None):
        self.scale = config.get("scale", True)
        self.center = config.get("center", True)
        self.n_weights = 2 + int(self.scale) + int(self.center)
        super().__init__(config, weights, class_name)
        axis = config.get("axis", -1)
        if isinstance(axis, list):
            if len(axis) != 1:
                raise self.unsupported("axis", axis, "only one axis is supported")
            axis = axis[0]
        self.axis = int(axis)
        for opt in ("renorm",):
            if config.get(opt):
                raise self.unsupported(opt, config.get(opt))
        w = list(weights)
        gamma = w.pop(0) if self.scale else None
        beta = w.pop(0) if self.center else None
        mean, var = w
        eps = float(config.get("epsilon", 1e-3))
        # Fold into one multiply-add: y = x * inv + (beta - mean * inv)
        inv = 1.0 / np.sqrt(var + eps)
        if gamma is not None:
            inv = inv * gamma
        self.mul = inv
        self.add = (beta if beta is not None else 0.0) - mean * inv

    def forward(self, x, mask=None):
        axis = self.axis % x.ndim if x.ndim else 0
        if x.shape[axis] != self.mul.shape[0]:
            raise InputError(f"BatchNormalization layer '{self.name}': expected "
                             f"{self.mul.shape[0]} channels on axis {self.axis}, got shape {x.shape}")
        shape = [1] * x.ndim
        shape[axis] = -1
        y = x * self.mul.reshape(shape)
        y += self.add.reshape(shape)
        return y


class LayerNormalization(Layer):
    """y = (x - mean) / sqrt(var + epsilon) * gamma + beta over ``axis`` (per sample)."""

    supports_masking = True

    @classmethod
    def weight_shapes(cls, config):
        """[gamma], [beta]: (features,) for one axis; equal but unchecked shapes for several."""
        n = int(config.get("scale", True)) + int(config.get("center", True))
        axis = config.get("axis", -1)
        one_axis = not isinstance(axis, list) or len(axis) == 1
        return [("features",) if one_axis else None] * n

    def __init__(self, config, weights, class_name=None):
        self.scale = config.get("scale", True)
        self.center = config.get("center", True)
        self.n_weights = int(self.scale) + int(self.center)
        super().__init__(config, weights, class_name)
        if config.get("rms_scaling"):
            raise self.unsupported("rms_scaling", True)
        axis = config.get("axis", -1)
        self.axis = tuple(axis) if isinstance(axis, list) else (axis,)
        w = list(weights)
        self.gamma = w.pop(0) if self.scale else None
        self.beta = w.pop(0) if self.center else None
        self.eps = float(config.get("epsilon", 1e-3))

    def forward(self, x, mask=None):
        axes = tuple(a % x.ndim for a in self.axis)
        mean = x.mean(axis=axes, keepdims=True)
        var = ((x - mean) ** 2).mean(axis=axes, keepdims=True)
        y = (x - mean) / np.sqrt(var + self.eps)
        shape = [1] * x.ndim
        for a in axes:
            shape[a] = x.shape[a]
        if self.gamma is not None:
            y = y * self.gamma.reshape(shape)
        if self.beta is not None:
            y = y + self.beta.reshape(shape)
        return y


class Flatten(Layer):
    """Row-major flatten of all non-batch axes (channels_last order, as Keras)."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        if config.get("data_format", "channels_last") not in ("channels_last", None):
            raise self.unsupported("data_format", config.get("data_format"))

    def forward(self, x, mask=None):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # explicit size: works for N=0


class Reshape(Layer):
    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.target = tuple(config["target_shape"])

    def forward(self, x, mask=None):
        try:
            target = list(self.target)
            if -1 in target:  # resolve -1 explicitly so that an empty batch works too
                known = int(np.prod([t for t in target if t != -1]))
                target[target.index(-1)] = int(np.prod(x.shape[1:])) // max(known, 1)
            return x.reshape((x.shape[0],) + tuple(target))
        except ValueError:
            raise InputError(f"Reshape layer '{self.name}': cannot reshape input of shape "
                             f"{x.shape} to (batch,) + {self.target}") from None


class Permute(Layer):
    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.dims = tuple(config["dims"])

    def forward(self, x, mask=None):
        return np.transpose(x, (0,) + self.dims)


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


class Masking(Layer):
    """Masks timesteps whose features all equal ``mask_value``: output x * mask,
    mask = any(x != mask_value, axis=-1)."""

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.value = float(config.get("mask_value", 0.0))

    def compute_mask(self, x, mask):
        return np.any(x != self.value, axis=-1)

    def forward(self, x, mask=None):
        m = np.any(x != self.value, axis=-1, keepdims=True)
        return x * m


class Embedding(Layer):
    """y[n, t] = embeddings[ids[n, t]]; with ``mask_zero`` the output mask is ids != 0.

    Ids must be integers in [0, input_dim). Float arrays are accepted only if every
    value is integral (Keras would silently truncate 1.7 to 1; we refuse)."""

    n_weights = 1

    @classmethod
    def weight_shapes(cls, config):
        """embeddings (input_dim, output_dim)."""
        return [(int(config["input_dim"]), int(config["output_dim"]))]

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        if config.get("lora_rank"):
            raise self.unsupported("lora_rank", config.get("lora_rank"))
        if config.get("quantization_config"):
            raise self.unsupported("quantization_config", config.get("quantization_config"))
        self.table = weights[0]
        self.input_dim = self.table.shape[0]
        self.mask_zero = bool(config.get("mask_zero", False))

    def check_ids(self, x):
        x = np.asarray(x)
        if x.dtype.kind in "iu":
            ids = x
        elif x.dtype.kind == "f":
            if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                raise InputError(
                    f"Embedding layer '{self.name}': token ids must be integers; got "
                    f"non-integral float values (e.g. {x[np.isfinite(x) & (x != np.round(x))][:3]}). "
                    "Pass an integer array (e.g. x.astype(np.int64)).")
            ids = x.astype(np.int64)
        else:
            raise InputError(f"Embedding layer '{self.name}': token ids must be an integer "
                             f"array, got dtype {x.dtype}")
        if ids.size:
            lo, hi = ids.min(), ids.max()
            if lo < 0 or hi >= self.input_dim:
                bad = lo if lo < 0 else hi
                raise InputError(
                    f"Embedding layer '{self.name}': token id {bad} out of range "
                    f"[0, {self.input_dim}) (input_dim={self.input_dim}). Check the "
                    "tokenizer/vocabulary size used to build the ids.")
        return ids

    def compute_mask(self, x, mask):
        if not self.mask_zero:
            return None
        return np.asarray(x) != 0

    def forward(self, x, mask=None):
        return self.table[self.check_ids(x)]
