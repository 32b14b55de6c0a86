"""Core layers: Input, the inference no-ops (Dropout, noise, random augmentation), Dense,
Embedding, Masking and LayerScale."""
import numpy as np

from .. import activations
from ..errors import InputError, NoBackwardError
from ..profiling import gemm
from .layer import Layer

# Random augmentation layers: Keras transforms the batch with its own RNG in training mode
# and returns it unchanged with training=False (every ``keras.layers.Random*`` of Keras
# 3.15; RandomCrop too, whose code crops only in training, although its docstring and
# symbolic output shape say it crops at inference: tests/test_scratch_preprocessing_layers.py).
RANDOM_AUGMENTATION = ("RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
                       "RandomContrast", "RandomBrightness", "RandomColorDegeneration",
                       "RandomColorJitter", "RandomCrop", "RandomElasticTransform", "RandomErasing",
                       "RandomGaussianBlur", "RandomGrayscale", "RandomHue", "RandomInvert",
                       "RandomPerspective", "RandomPosterization", "RandomSaturation",
                       "RandomSharpness", "RandomShear")
# Noise layers whose training-mode randomness scratch_layers does not reproduce.
RANDOM_NOISE = ("GaussianNoise", "GaussianDropout", "AlphaDropout")
DROPOUT = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D")
# Layers that are the identity at inference: Keras runs them with training=False in predict.
INFERENCE_NO_OPS = DROPOUT + RANDOM_NOISE + RANDOM_AUGMENTATION + ("ActivityRegularization", "Identity")


class InputLayer(Layer):
    """Keras ``InputLayer``: identity; its ``batch_shape``/``dtype`` describe the
    model input and are used by :class:`~scratch_layers.engine.model.Model` to validate it."""

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
        y = gemm(x, self.kernel)
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

    input_kind = "int"

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
