"""Normalization layers: ``BatchNormalization``, ``LayerNormalization``, ``UnitNormalization``,
``GroupNormalization``, ``RMSNormalization``."""
import numpy as np

from ..blas import block_sum, for_blocks
from ..errors import InputError, ModelFileError
from ..ops import l2_normalize, l2_normalize_grad, sum_to_shape
from .layer import Layer, axis_list


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

    def channel_affine(self, rank):
        """At inference y = x * mul + add per channel."""
        return (self.mul, self.add) if self.axis % rank == rank - 1 else None

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


class UnitNormalization(Layer):
    """y = x inv, inv = min(1 / sqrt(s), 1e12), s = sum(x^2) over ``axis``
    (``ops.normalize(order=2, epsilon=1e-12)``, :func:`scratch_layers.ops.l2_normalize`).
    Backward: :func:`scratch_layers.ops.l2_normalize_grad`."""

    supports_masking = True
    EPSILON = 1e-12

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.axis = axis_list(config.get("axis", -1))

    def _axes(self, x):
        return tuple(a % x.ndim for a in self.axis)

    def forward(self, x, mask=None):
        return l2_normalize(x, self._axes(x), self.EPSILON)[0]

    def forward_train(self, x, mask, ctx):
        y, (r, inv) = l2_normalize(x, self._axes(x), self.EPSILON)
        self._saved = (x, r, inv)
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None, []
        x, r, inv = self._saved
        return l2_normalize_grad(x, dy, self._axes(x), r, inv, self.EPSILON), []


class GroupNormalization(Layer):
    """Keras' GroupNormalization: the C channels of ``axis`` split into G = ``groups``
    groups of C/G consecutive channels (``groups=-1``: G = C, instance normalization); per
    sample and group, over the group's channels and every other non-batch axis:
    mu = mean(x), var = mean((x - mu)^2) (tf.nn.moments), inv = 1 / sqrt(var + epsilon),
    computed as Keras writes it: y = x * (inv gamma) + (beta - mu * inv gamma)
    (gamma/beta per channel, absent when ``scale``/``center`` is False).

    Backward, with xhat = (x - mu) inv, dxh = gamma dy and means over a group's cells:
    dgamma = sum(dy xhat), dbeta = sum(dy) over all but the channel axis;
    dx = inv (dxh - mean(dxh) - xhat mean(dxh xhat))."""

    supports_masking = True

    @classmethod
    def weight_shapes(cls, config):
        """[gamma], [beta]: (channels,)."""
        n = int(bool(config.get("scale", True))) + int(bool(config.get("center", True)))
        return [("channels",)] * n

    def __init__(self, config, weights, class_name=None):
        self.scale = bool(config.get("scale", True))
        self.center = bool(config.get("center", True))
        self.n_weights = int(self.scale) + int(self.center)
        super().__init__(config, weights, class_name)
        axis = config.get("axis", -1)
        if isinstance(axis, list):
            if len(axis) != 1:
                raise self.unsupported("axis", axis, "GroupNormalization normalizes along one axis")
            axis = axis[0]
        self.axis = int(axis)
        self.groups = int(config.get("groups", 32))
        if self.groups < 1 and self.groups != -1:
            raise ModelFileError(f"{self.class_name} layer '{self.name}': groups={self.groups} must "
                                 "be a positive integer or -1")
        w = list(weights)
        self.gamma = w.pop(0) if self.scale else None
        self.beta = w.pop(0) if self.center else None
        self.eps = float(config.get("epsilon", 1e-3))

    def _grouped(self, x):
        """(x as (..., G, C/G, ...) with the groups at ``axis``, the reduction axes, the
        broadcast shape of a per-channel vector)."""
        if x.ndim < 2:
            raise InputError(f"{self.class_name} layer '{self.name}': expected a batch with a "
                             f"channel axis, got shape {x.shape}")
        a = self.axis % x.ndim
        c = x.shape[a]
        g = c if self.groups == -1 else self.groups
        if a == 0 or c % g:
            raise InputError(f"{self.class_name} layer '{self.name}': {c} channels on axis "
                             f"{self.axis} of input shape {x.shape} do not split into {g} groups")
        xg = x.reshape(x.shape[:a] + (g, c // g) + x.shape[a + 1:])
        red = tuple(i for i in range(1, xg.ndim) if i != a)
        shape = [1] * xg.ndim
        shape[a:a + 2] = [g, c // g]
        return xg, red, shape

    def _normalize(self, x):
        xg, red, shape = self._grouped(x)
        mean = xg.mean(axis=red, keepdims=True)
        centered = xg - mean
        var = np.mean(centered * centered, axis=red, keepdims=True)
        inv = 1.0 / np.sqrt(var + self.eps)
        scale = inv if self.gamma is None else inv * self.gamma.reshape(shape)
        shift = -mean * scale
        if self.beta is not None:
            shift = shift + self.beta.reshape(shape)
        y = xg * scale + shift
        return y.reshape(x.shape), centered * inv, inv, red, shape

    def forward(self, x, mask=None):
        return self._normalize(x)[0]

    def forward_train(self, x, mask, ctx):
        y, xhat, inv, red, shape = self._normalize(x)
        self._saved = (xhat, inv, red, shape)
        return y

    def backward(self, dy, need_dx=True):
        xhat, inv, red, shape = self._saved
        dyg = dy.reshape(xhat.shape)
        other = tuple(i for i, n in enumerate(shape) if n == 1)
        grads = []
        if self.gamma is not None:
            grads.append(np.sum(dyg * xhat, axis=other).reshape(self.gamma.shape))
        if self.beta is not None:
            grads.append(np.sum(dyg, axis=other).reshape(self.beta.shape))
        if not need_dx:
            return None, grads
        dxh = dyg if self.gamma is None else dyg * self.gamma.reshape(shape)
        dx = inv * (dxh - np.mean(dxh, axis=red, keepdims=True)
                    - xhat * np.mean(dxh * xhat, axis=red, keepdims=True))
        return dx.reshape(dy.shape), grads


class RMSNormalization(Layer):
    """Keras' RMSNormalization (``keras.ops.rms_normalization``; not LayerNormalization's
    ``rms_scaling``): r = 1 / sqrt(mean(x^2) + epsilon) over ``axis`` (epsilon inside the
    root, no centering, default 1e-6), y = x r * scale, the ``scale`` weight (the sizes of
    ``axis``) multiplied with NumPy's trailing broadcasting, as Keras multiplies it.

    Backward, with u = dy * scale and means over ``axis``: dx = r u - r^3 x mean(u x);
    dscale = dy x r summed back to scale's shape."""

    n_weights = 1

    @classmethod
    def weight_shapes(cls, config):
        """scale: the sizes of the normalized axes (one symbol each)."""
        return [tuple(f"axis{i}" for i in range(len(axis_list(config.get("axis", -1)))))]

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.axis = axis_list(config.get("axis", -1))
        if not self.axis:
            raise self.unsupported("axis", config.get("axis"), "one axis or a list of axes")
        self.eps = float(config.get("epsilon", 1e-6))
        self.scale = weights[0]

    def _normalize(self, x):
        axes = tuple(sorted(a % x.ndim for a in self.axis))
        r = 1.0 / np.sqrt(np.mean(x * x, axis=axes, keepdims=True) + self.eps)
        xr = x * r
        try:
            y = xr * self.scale
        except ValueError:
            raise InputError(f"{self.class_name} layer '{self.name}': its scale of shape "
                             f"{self.scale.shape} does not broadcast against input shape {x.shape} "
                             "(Keras multiplies them with trailing broadcasting and fails too)") from None
        return y, xr, r, axes

    def forward(self, x, mask=None):
        return self._normalize(x)[0]

    def forward_train(self, x, mask, ctx):
        y, xr, r, axes = self._normalize(x)
        self._saved = (x, xr, r, axes)
        return y

    def backward(self, dy, need_dx=True):
        x, xr, r, axes = self._saved
        grads = [sum_to_shape(dy * xr, self.scale.shape)]
        if not need_dx:
            return None, grads
        u = dy * self.scale
        dx = r * u - r ** 3 * x * np.mean(u * x, axis=axes, keepdims=True)
        return dx, grads
