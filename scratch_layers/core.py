"""Core layers: Input, inference no-ops, Dense, activations, normalisation,
reshaping and Embedding."""
import numpy as np

from . import activations
from ._blas import block_sum, for_blocks
from .base import KeepsInputOutput, Layer
from .errors import InputError, NoBackwardError

# Random augmentation layers: Keras transforms the batch with its own RNG in training mode.
RANDOM_AUGMENTATION = ("RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
                       "RandomContrast", "RandomBrightness")
# Noise layers whose training-mode randomness scratch_layers does not reproduce.
RANDOM_NOISE = ("GaussianNoise", "GaussianDropout", "AlphaDropout")


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

    def forward_train(self, x, mask, ctx):
        """Identity, except in training mode: Dropout / SpatialDropout draw their own mask
        (y = x * keep / (1 - rate), keep ~ Bernoulli(1 - rate), from ``ctx.rng``); random
        augmentation raises unless ``ctx.augmentation == "identity"``; noise layers raise."""
        self._keep = None
        if not ctx.training:
            return x
        if self.class_name in RANDOM_AUGMENTATION:
            if ctx.augmentation != "identity":
                raise NoBackwardError(
                    f"{self.class_name} layer '{self.name}' is random augmentation, which "
                    "scratch_layers does not reproduce in training mode. Augment the batch "
                    "yourself and pass augmentation='identity' (the layer is then the identity), "
                    "or use training=False.")
            return x
        if self.class_name in RANDOM_NOISE or self.class_name == "ActivityRegularization":
            raise self.no_backward("in training mode (its training-time noise/loss is not "
                                   "reproduced; use training=False)")
        rate = float(self.config.get("rate", 0.0))
        if not self.class_name.endswith("Dropout") or rate == 0.0:
            return x
        shape = list(x.shape)
        if self.class_name.startswith("SpatialDropout"):  # one draw per sample and channel
            shape[1:-1] = [1] * (x.ndim - 2)
        self._keep = (ctx.rng.random(shape) >= rate).astype(x.dtype) / (1.0 - rate)
        return x * self._keep

    def backward(self, dy, need_dx=True):
        return (dy if self._keep is None else dy * self._keep), []


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

    def forward_train(self, x, mask, ctx):
        self.check_last_dim(x, self.kernel.shape[0])
        z = np.matmul(x, self.kernel)
        if self.bias is not None:
            z += self.bias
        y = self.activation(z)
        self._saved = (x, z, y)
        return y

    def backward(self, dy, need_dx=True, wrt_preactivation=False):
        """z = x W + b, y = act(z):  dz = act'(z) dy;  dW = x^T dz;  db = sum dz;
        dx = dz W^T (x of any rank: the leading axes are flattened). With
        ``wrt_preactivation`` the incoming gradient is already dL/dz."""
        x, z, y = self._saved
        dz = dy if wrt_preactivation else activations.backward(
            self.activation, z, y, dy, f"Dense layer '{self.name}'")
        dz2 = dz.reshape(-1, dz.shape[-1])
        grads = [np.matmul(x.reshape(-1, x.shape[-1]).T, dz2)]
        if self.bias is not None:
            grads.append(dz2.sum(axis=0))
        return (np.matmul(dz, self.kernel.T) if need_dx else None), grads


class ElementwiseBackward(KeepsInputOutput):
    """Mixin for weightless activation layers: backward applies :meth:`local_grad`
    (x, y, dy) -> dx to the kept input and output."""

    def backward(self, dy, need_dx=True):
        x, y = self._saved
        return self.local_grad(x, y, dy), []


class Activation(ElementwiseBackward, Layer):
    supports_masking = True

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
        return activations._softmax_grad(x, y, dy, axis=self.axis)

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
        self.eps = eps
        self.momentum = float(config.get("momentum", 0.99))

    def trainable_flags(self):
        """gamma, beta trainable (unless the layer is frozen); the moving statistics never."""
        t = bool(self.config.get("trainable", True))
        return [t] * (self.n_weights - 2) + [False, False]

    def _channels_last_rows(self, a):
        """``a`` with the channel axis moved last, as (rows, channels) (a view when the
        channel axis is already last and ``a`` is contiguous)."""
        moved = np.moveaxis(a, self.axis % a.ndim, -1)
        return moved.reshape(-1, moved.shape[-1]), moved.shape

    def forward_train(self, x, mask, ctx):
        """Training mode (and a trainable layer): batch statistics per channel over the
        M = N*H*W values of the other axes, mu = mean(x), var = mean((x - mu)^2) (biased,
        as tf.nn.moments); otherwise the moving statistics.  xhat = (x - mu) / sqrt(var +
        eps); y = gamma * xhat + beta. Every pass runs in row blocks on the worker threads."""
        w = list(self.weights)
        gamma = w.pop(0) if self.scale else None
        beta = w.pop(0) if self.center else None
        batch = ctx.training and bool(self.config.get("trainable", True))
        if batch and mask is not None:
            raise self.no_backward("with a mask in training mode")
        flat, moved_shape = self._channels_last_rows(x)
        m = len(flat)
        centered = np.empty_like(flat)  # x - mu; xhat = centered * inv is never stored
        if batch:
            mean = block_sum(lambda s: flat[s].sum(axis=0), m, flat.size) / m

            def center(s):
                np.subtract(flat[s], mean, out=centered[s])
                return np.einsum("ij,ij->j", centered[s], centered[s])
            var = block_sum(center, m, flat.size) / m
            self.batch_stats = (mean, var)
        else:
            mean, var = w
            self.batch_stats = None
            for_blocks(lambda s: np.subtract(flat[s], mean, out=centered[s]), m, flat.size)
        inv = 1.0 / np.sqrt(var + self.eps)
        g = inv if gamma is None else inv * gamma
        y = np.empty_like(flat)

        def scale(s):
            np.multiply(centered[s], g, out=y[s])
            if beta is not None:
                y[s] += beta
        for_blocks(scale, m, flat.size)
        self._saved = (centered, inv, g, batch, moved_shape)
        return np.moveaxis(y.reshape(moved_shape), -1, self.axis % x.ndim)

    def backward(self, dy, need_dx=True):
        """With xhat = (x - mu) inv, inv = 1 / sqrt(var + eps), g = gamma inv:
        dgamma = sum(dy xhat); dbeta = sum(dy); with moving statistics dx = g dy; with
        batch statistics (M values per channel) dx = g dy - (g/M) (dbeta + xhat dgamma)."""
        centered, inv, g, batch, moved_shape = self._saved
        dyf, _ = self._channels_last_rows(dy)
        m = len(dyf)
        dgamma, dbeta = block_sum(
            lambda s: np.stack([np.einsum("ij,ij->j", dyf[s], centered[s]), dyf[s].sum(axis=0)]),
            m, dyf.size)
        dgamma *= inv
        grads = ([dgamma] if self.scale else []) + ([dbeta] if self.center else []) + [None, None]
        if not need_dx:
            return None, grads
        dx = np.empty_like(dyf)
        per_centered, per_channel = dgamma * inv * (g / m), dbeta * (g / m)

        def block(s):
            np.multiply(dyf[s], g, out=dx[s])
            if batch:
                dx[s] -= centered[s] * per_centered
                dx[s] -= per_channel
        for_blocks(block, m, dyf.size)
        return np.moveaxis(dx.reshape(moved_shape), -1, self.axis % dy.ndim), grads

    def state_updates(self):
        """The weights after one training step's moving-average update (Keras):
        moving = moving * momentum + batch_stat * (1 - momentum); None if no update."""
        if self.batch_stats is None:
            return None
        k = self.n_weights - 2
        mean, var = self.batch_stats
        mom = self.momentum
        return list(self.weights[:k]) + [self.weights[k] * mom + mean * (1.0 - mom),
                                         self.weights[k + 1] * mom + var * (1.0 - mom)]

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
    """Per sample over ``axis`` (M values): mu = mean(x), var = mean((x - mu)^2),
    inv = 1 / sqrt(var + epsilon), xhat = (x - mu) inv, y = gamma xhat + beta (gamma/beta
    absent when ``scale``/``center`` is False).

    ``rms_scaling=True`` (Keras 3's deprecated option, exactly what Keras computes): no
    centering and no beta, y = gamma x inv (var is still the centered variance).

    Backward, with dxh = gamma dy and means over ``axis``:
    dgamma = sum(dy xhat), dbeta = sum(dy) over the other axes;
    dx = inv (dxh - mean(dxh) - xhat mean(dxh xhat)); with rms_scaling
    dgamma = sum(dy x inv), dx = inv dxh - inv^3 (x - mu) mean(dxh x)."""

    supports_masking = True

    @classmethod
    def weight_shapes(cls, config):
        """[gamma], [beta]: (features,) for one axis; equal shapes (one symbol per axis) for
        several. rms_scaling keeps gamma and drops beta (Keras' build)."""
        rms = bool(config.get("rms_scaling", False))
        n = int(bool(config.get("scale", True)) or rms) + int(bool(config.get("center", True)) and not rms)
        axis = config.get("axis", -1)
        axes = axis if isinstance(axis, list) else [axis]
        return [tuple(f"axis{i}" for i in range(len(axes)))] * n

    def __init__(self, config, weights, class_name=None):
        self.rms_scaling = bool(config.get("rms_scaling", False))
        self.scale = bool(config.get("scale", True)) or self.rms_scaling
        self.center = bool(config.get("center", True)) and not self.rms_scaling
        self.n_weights = int(self.scale) + int(self.center)
        super().__init__(config, weights, class_name)
        axis = config.get("axis", -1)
        self.axis = tuple(sorted(int(a) for a in axis)) if isinstance(axis, list) else (int(axis),)
        w = list(weights)
        self.gamma = w.pop(0) if self.scale else None
        self.beta = w.pop(0) if self.center else None
        self.eps = float(config.get("epsilon", 1e-3))

    def _axes(self, x):
        axes = tuple(a % x.ndim for a in self.axis)
        shape = [1] * x.ndim  # gamma/beta reshaped over the normalized axes (as Keras)
        for a in axes:
            shape[a] = x.shape[a]
        return axes, shape

    def _normalize(self, x):
        """(y, xhat or None, inv, axes, shape); xhat is None with rms_scaling."""
        axes, shape = self._axes(x)
        mean = x.mean(axis=axes, keepdims=True)
        centered = x - mean
        var = np.mean(centered * centered, axis=axes, keepdims=True)
        inv = 1.0 / np.sqrt(var + self.eps)
        if self.rms_scaling:
            xhat, y = None, x * inv
        else:
            xhat = centered * inv
            y = xhat
        if self.gamma is not None:
            y = y * self.gamma.reshape(shape)
        if self.beta is not None:
            y = y + self.beta.reshape(shape)
        return y, (centered if self.rms_scaling else xhat), inv, axes, shape

    def forward(self, x, mask=None):
        return self._normalize(x)[0]

    def forward_train(self, x, mask, ctx):
        y, kept, inv, axes, shape = self._normalize(x)
        self._saved = (x, kept, inv, axes, shape)
        return y

    def backward(self, dy, need_dx=True):
        x, kept, inv, axes, shape = self._saved
        other = tuple(a for a in range(dy.ndim) if a not in axes)
        g = 1.0 if self.gamma is None else self.gamma.reshape(shape)
        dxh = dy * g
        if self.rms_scaling:
            centered = kept
            grads = [np.sum(dy * x * inv, axis=other).reshape(self.gamma.shape)]
            if not need_dx:
                return None, grads
            dx = inv * dxh - inv ** 3 * centered * np.mean(dxh * x, axis=axes, keepdims=True)
            return dx, grads
        xhat = kept
        grads = []
        if self.gamma is not None:
            grads.append(np.sum(dy * xhat, axis=other).reshape(self.gamma.shape))
        if self.beta is not None:
            grads.append(np.sum(dy, axis=other).reshape(self.beta.shape))
        if not need_dx:
            return None, grads
        dx = inv * (dxh - np.mean(dxh, axis=axes, keepdims=True)
                    - xhat * np.mean(dxh * xhat, axis=axes, keepdims=True))
        return dx, grads


class Flatten(Layer):
    """Row-major flatten of all non-batch axes (channels_last order, as Keras)."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        if config.get("data_format", "channels_last") not in ("channels_last", None):
            raise self.unsupported("data_format", config.get("data_format"))

    def forward(self, x, mask=None):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # explicit size: works for N=0

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape), []


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

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape), []


class Permute(Layer):
    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.dims = tuple(config["dims"])

    def forward(self, x, mask=None):
        return np.transpose(x, (0,) + self.dims)

    def forward_train(self, x, mask, ctx):
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return np.transpose(dy, np.argsort((0,) + self.dims)), []


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

    def forward_train(self, x, mask, ctx):
        self._keep = np.any(x != self.value, axis=-1, keepdims=True)
        return x * self._keep

    def backward(self, dy, need_dx=True):
        return dy * self._keep, []


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

    def forward_train(self, x, mask, ctx):
        self._ids = self.check_ids(x)
        return self.table[self._ids]

    def backward(self, dy, need_dx=True):
        """dE[v] = sum of dy over the positions whose id is v (padding ids included: the
        layers after a mask give them zero gradient). The input (ids) has no gradient."""
        ids, values = self._ids.ravel(), dy.reshape(-1, dy.shape[-1])
        dtable = np.zeros_like(self.table)
        np.add.at(dtable, ids, values)
        self._slices = (ids, values)
        return None, [dtable]

    def gradient_squares(self):
        """Keras' g^2 for the table's sliced gradient (see :class:`scratch_layers.Adam`):
        per id, the sum of the squared per-position gradients of the last backward."""
        ids, values = self._slices
        squares = np.zeros_like(self.table)
        np.add.at(squares, ids, np.square(values))
        return [squares]
