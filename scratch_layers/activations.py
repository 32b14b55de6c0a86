"""Keras 3 activation functions re-implemented in NumPy (float64).

One table, :data:`ACTIVATIONS`, maps the Keras serialized name to a function
``f(x) -> y``. Definitions follow ``keras/src/activations/activations.py`` and the
TensorFlow backend (``keras/src/backend/tensorflow/nn.py``) of Keras 3.
"""
import math

import numpy as np

from .errors import NoBackwardError, UnsupportedLayerError

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def linear(x):
    return x


def relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """Keras' ``activations.relu``, step by step as it computes it
    (keras/src/activations/activations.py, ``ReLU.static_call``):

    * negative_slope != 0, no max_value, threshold 0: ``leaky_relu``;
    * else pos = x where x > threshold else 0 (threshold != 0), relu6(x) (threshold 0,
      max_value 6), max(x, 0) otherwise; then clipped to [0, max_value] when max_value is
      set (so with a negative threshold, x in (threshold, 0) gives 0);
    * y = pos - negative_slope * max(threshold - x, 0).

    Its derivative is :func:`relu_grad`."""
    if negative_slope == 0.0 and threshold == 0.0 and max_value is None:
        return np.maximum(x, 0.0)
    if negative_slope != 0.0 and max_value is None and threshold == 0.0:
        return leaky_relu(x, negative_slope)
    y = np.where(x > threshold, x, 0.0) if threshold != 0.0 else np.maximum(x, 0.0)
    if max_value is not None:
        y = np.clip(y, 0.0, max_value)
    if negative_slope != 0.0:
        y = y - negative_slope * np.maximum(threshold - x, 0.0)
    return y


def relu_grad(x, dy, negative_slope=0.0, max_value=None, threshold=0.0):
    """dL/dx of :func:`relu` as TF differentiates Keras' ops: the positive part passes
    where x > threshold (Relu6Grad: 0 < x < 6 on the relu6 path), clip_by_value passes
    where 0 <= pos <= max_value (ends included), and the negative part adds
    negative_slope where x < threshold (ReluGrad of threshold - x). Leaky path:
    LeakyReluGrad, dy where x > 0, negative_slope dy elsewhere."""
    if negative_slope != 0.0 and max_value is None and threshold == 0.0:
        return leaky_relu_grad(x, dy, negative_slope)
    if threshold == 0.0 and max_value == 6:
        slope = ((x > 0) & (x < 6.0)).astype(dy.dtype)
    else:
        slope = (x > threshold).astype(dy.dtype)
        if max_value is not None:
            pos = np.where(x > threshold, x, 0.0) if threshold != 0.0 else np.maximum(x, 0.0)
            slope *= (pos >= 0.0) & (pos <= max_value)
    if negative_slope != 0.0:
        slope += negative_slope * (x < threshold)
    return dy * slope


def relu6(x):
    return np.clip(x, 0.0, 6.0)


def leaky_slope(negative_slope):
    """tf.nn.leaky_relu's ``alpha`` is a float32 op attribute: TF multiplies by the slope
    rounded to float32, in float64 too (0.2 -> 0.20000000298...)."""
    return float(np.float32(negative_slope))


def leaky_relu(x, negative_slope=0.2):
    """tf.nn.leaky_relu: x where x > 0, else slope x (slope rounded to float32, see
    :func:`leaky_slope`). Keras 3's default slope is 0.2 (not TF's 0.3 nor PyTorch's 0.01)."""
    return np.where(x > 0, x, leaky_slope(negative_slope) * x)


def leaky_relu_grad(x, dy, negative_slope=0.2):
    """LeakyReluGrad: dy where x > 0, slope dy elsewhere (float32 slope, as the forward)."""
    return np.where(x > 0, dy, leaky_slope(negative_slope) * dy)


def sigmoid(x):
    """Numerically stable logistic: never evaluates exp of a large positive number."""
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def tanh(x):
    return np.tanh(x)


def softmax(x, axis=-1):
    """exp(x - max) / sum(exp(x - max)); subtracting the max avoids overflow."""
    z = x - np.max(x, axis=axis, keepdims=True)
    np.exp(z, out=z)
    z /= np.sum(z, axis=axis, keepdims=True)
    return z


def log_softmax(x, axis=-1):
    z = x - np.max(x, axis=axis, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=axis, keepdims=True))


def elu(x, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def selu(x):
    return _SELU_SCALE * elu(x, _SELU_ALPHA)


def celu(x, alpha=1.0):
    return np.maximum(x, 0.0) + alpha * np.expm1(np.minimum(x, 0.0) / alpha)


def softplus(x):
    """log(1 + exp(x)) computed as logaddexp(0, x) (no overflow)."""
    return np.logaddexp(0.0, x)


def softsign(x):
    return x / (1.0 + np.abs(x))


def silu(x):
    """swish / silu: x * sigmoid(x)."""
    return x * sigmoid(x)


def _erf(x):
    """Vectorised erf (NumPy has none): Numerical Recipes 3rd ed. ``erfccheb``
    Chebyshev fit of erfc, max abs error ~3e-16 against ``math.erf``; computed in
    float64 and returned in the input's float dtype."""
    dtype = np.asarray(x).dtype if np.asarray(x).dtype.kind == "f" else np.float64
    x = np.asarray(x, dtype=np.float64)
    # Numerical Recipes 3rd ed. erfc via Chebyshev expansion, accurate to ~1.2e-16
    z = np.abs(x)
    t = 2.0 / (2.0 + z)
    ty = 4.0 * t - 2.0
    d = np.zeros_like(z)
    dd = np.zeros_like(z)
    for c in _ERF_COF[:0:-1]:
        tmp = d
        d = ty * d - dd + c
        dd = tmp
    erfc_z = t * np.exp(-z * z + 0.5 * (_ERF_COF[0] + ty * d) - dd)
    return np.where(x >= 0, 1.0 - erfc_z, erfc_z - 1.0).astype(dtype, copy=False)


_ERF_COF = [
    -1.3026537197817094, 6.4196979235649026e-1, 1.9476473204185836e-2,
    -9.561514786808631e-3, -9.46595344482036e-4, 3.66839497852761e-4,
    4.2523324806907e-5, -2.0278578112534e-5, -1.624290004647e-6,
    1.303655835580e-6, 1.5626441722e-8, -8.5238095915e-8, 6.529054439e-9,
    5.059343495e-9, -9.91364156e-10, -2.27365122e-10, 9.6467911e-11,
    2.394038e-12, -6.886027e-12, 8.94487e-13, 3.13092e-13, -1.12708e-13,
    3.81e-16, 7.106e-15, -1.523e-15, -9.4e-17, 1.21e-16, -2.8e-17,
]


def gelu(x, approximate=False):
    """Keras 3 ``activation="gelu"`` (``keras.activations.gelu(x, approximate=False)``) is the
    exact GELU, 0.5 x (1 + erf(x / sqrt 2)); ``approximate=True`` is :func:`gelu_tanh`.
    A serialized activation cannot ask for the tanh form (only the name is saved)."""
    if approximate:
        return gelu_tanh(x)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


_GELU_C = 0.7978845608028654  # sqrt(2/pi), as tf.nn.gelu writes it
# tf.nn.gelu casts the Python float 0.044715 through a float32 tensor: TF's coefficient
# is float32(0.044715) = 0.04471499845..., in float64 too.
_GELU_A = float(np.float32(0.044715))


def gelu_tanh(x):
    """tf.nn.gelu(approximate=True): 0.5 x (1 + tanh(c (x + a x^3))), c = sqrt(2/pi),
    a = 0.044715 rounded to float32 (see _GELU_A)."""
    return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + _GELU_A * x ** 3)))


def hard_sigmoid(x):
    """Keras 3 definition: relu6(x + 3) / 6 (Keras 2 used 0.2 x + 0.5)."""
    return relu6(x + 3.0) / 6.0


def hard_silu(x):
    return x * hard_sigmoid(x)


def exponential(x):
    return np.exp(x)


def mish(x):
    return x * np.tanh(softplus(x))


def log_sigmoid(x):
    return -softplus(-x)


def hard_tanh(x):
    return np.clip(x, -1.0, 1.0)


def tanh_shrink(x):
    return x - np.tanh(x)


def soft_shrink(x, threshold=0.5):
    return np.where(x > threshold, x - threshold, np.where(x < -threshold, x + threshold, 0.0))


def hard_shrink(x, threshold=0.5):
    return np.where(np.abs(x) > threshold, x, 0.0)


def threshold(x, threshold, default_value):
    """``keras.activations.threshold`` (tf.where(x > threshold, x, default_value)); not a
    string activation (it needs its arguments), used by the ``threshold`` operation node."""
    return np.where(x > threshold, x, default_value)


def squareplus(x, b=4):
    return (x + np.sqrt(x * x + b)) / 2.0


def sparse_plus(x):
    return np.where(x <= -1, 0.0, np.where(x < 1, 0.25 * (x + 1) ** 2, x))


def sparse_sigmoid(x):
    return np.where(x <= -1, 0.0, np.where(x >= 1, 1.0, 0.5 * (x + 1)))


def glu(x, axis=-1):
    a, b = np.split(x, 2, axis=axis)
    return a * sigmoid(b)


def sparsemax(x, axis=-1):
    """Sparsemax (Martins & Astudillo 2016), same algorithm as Keras' TF backend."""
    xs = -np.sort(-x, axis=axis)
    cs = np.cumsum(xs, axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    r = np.arange(1, x.shape[axis] + 1, dtype=x.dtype).reshape(shape)
    support = xs - (cs - 1) / r > 0
    k = np.sum(support, axis=axis, keepdims=True)
    tau = (np.sum(np.where(support, cs, 0.0), axis=axis, keepdims=True) - 1) / k
    return np.maximum(x - tau, 0.0)


ACTIVATIONS = {
    "linear": linear, None: linear, "relu": relu, "relu6": relu6,
    "leaky_relu": leaky_relu, "sigmoid": sigmoid, "tanh": tanh,
    "softmax": softmax, "log_softmax": log_softmax, "elu": elu, "selu": selu,
    "celu": celu, "softplus": softplus, "softsign": softsign, "silu": silu,
    "swish": silu, "gelu": gelu, "hard_sigmoid": hard_sigmoid,
    "hard_silu": hard_silu, "hard_swish": hard_silu, "exponential": exponential,
    "mish": mish, "log_sigmoid": log_sigmoid, "hard_tanh": hard_tanh,
    "tanh_shrink": tanh_shrink, "soft_shrink": soft_shrink,
    "hard_shrink": hard_shrink, "squareplus": squareplus,
    "sparse_plus": sparse_plus, "sparse_sigmoid": sparse_sigmoid, "glu": glu,
    "sparsemax": sparsemax,
}


def get(spec, where="layer"):
    """Resolve a serialized Keras activation (a name string, None, or a
    ``{"class_name": ..., "config": name}`` dict) to a NumPy function."""
    name = spec
    if isinstance(spec, dict):
        cfg = spec.get("config")
        name = cfg if isinstance(cfg, str) else (cfg or {}).get("name", spec.get("class_name"))
    if isinstance(name, str):
        name = name.lower()
    if name not in ACTIVATIONS:
        raise UnsupportedLayerError(
            f"{where}: unsupported activation {spec!r}. Supported: "
            + ", ".join(sorted(k for k in ACTIVATIONS if k)))
    return ACTIVATIONS[name]


# ----------------------------------------------------------------------------- backward
# dL/dx of y = f(x) given dL/dy. Each entry takes (x, y, dy): the pre-activation x, the
# output y and the upstream gradient dy, and returns dL/dx, the derivative TensorFlow's
# gradient registers for the op Keras uses (e.g. ReluGrad passes where x > 0).

def softmax_grad(x, y, dy, axis=-1):
    """J^T dy of y = softmax(x): y * (dy - sum(dy * y))."""
    return y * (dy - np.sum(dy * y, axis=axis, keepdims=True))


def _log_softmax_grad(x, y, dy, axis=-1):
    """y = x - logsumexp(x): dy - softmax(x) * sum(dy)."""
    return dy - np.exp(y) * np.sum(dy, axis=axis, keepdims=True)


def _gelu_grad(x, y, dy):
    """d/dx 0.5 x (1 + erf(x/sqrt2)) = Phi(x) + x phi(x)."""
    cdf = 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (cdf + x * pdf)


def _gelu_tanh_grad(x, y, dy):
    """u = c (x + a x^3), t = tanh(u): 0.5 (1 + t) + 0.5 x (1 - t^2) c (1 + 3 a x^2)."""
    t = np.tanh(_GELU_C * (x + _GELU_A * x ** 3))
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _GELU_C * (1.0 + 3 * _GELU_A * x * x))


def _relu6_grad(x, y, dy):
    """Relu6Grad: dy where 0 < x < 6."""
    return dy * ((x > 0) & (x < 6.0))


def _hard_sigmoid_grad(x, y, dy):
    """d/dx relu6(x + 3) / 6, as TF differentiates it: dy / 6 where 0 < x + 3 < 6
    (Relu6Grad of x + 3)."""
    z = x + 3.0
    return dy * ((z > 0) & (z < 6.0)) / 6.0


def _hard_silu_grad(x, y, dy):
    """y = x hs(x): hs(x) + x hs'(x)."""
    return dy * hard_sigmoid(x) + _hard_sigmoid_grad(x, None, x * dy)


def _mish_grad(x, y, dy):
    """y = x tanh(sp), sp = softplus(x), sp' = sigmoid(x): tanh(sp) + x (1 - tanh(sp)^2) sigmoid(x)."""
    t = np.tanh(softplus(x))
    return dy * (t + x * (1.0 - t * t) * sigmoid(x))


def _celu_grad(x, y, dy, alpha=1.0):
    """max(x, 0) + alpha expm1(min(x, 0) / alpha): 1 where x > 0, exp(x / alpha) where x < 0
    (at x = 0 TF's Maximum and Minimum gradients both pass: 2)."""
    return dy * ((x >= 0) + (x <= 0) * np.exp(np.minimum(x, 0.0) / alpha))


def _glu_grad(x, y, dy, axis=-1):
    """y = a sigmoid(b), x = [a, b] along ``axis``: da = dy s, db = dy a s (1 - s)."""
    a, b = np.split(x, 2, axis=axis)
    s = sigmoid(b)
    return np.concatenate([dy * s, dy * a * s * (1.0 - s)], axis=axis)


def shrink_grad(x, y, dy, threshold=0.5):
    """soft_shrink and hard_shrink (both tf.where on |x| > threshold): dy where |x| > threshold."""
    return dy * (np.abs(x) > threshold)


def threshold_grad(x, y, dy, threshold):
    """tf.where(x > threshold, x, default): dy where x > threshold."""
    return dy * (x > threshold)


def _squareplus_grad(x, y, dy, b=4):
    """y = (x + sqrt(x^2 + b)) / 2: (1 + x / sqrt(x^2 + b)) / 2."""
    return dy * 0.5 * (1.0 + x / np.sqrt(x * x + b))


GRADIENTS = {
    linear: lambda x, y, dy: dy,
    relu: lambda x, y, dy: dy * (x > 0),
    relu6: _relu6_grad,
    leaky_relu: lambda x, y, dy: leaky_relu_grad(x, dy),
    sigmoid: lambda x, y, dy: dy * y * (1.0 - y),
    tanh: lambda x, y, dy: dy * (1.0 - y * y),
    softmax: softmax_grad,
    log_softmax: _log_softmax_grad,
    elu: lambda x, y, dy: np.where(x > 0, dy, dy * (y + 1.0)),
    selu: lambda x, y, dy: np.where(x > 0, dy * _SELU_SCALE, dy * (y + _SELU_SCALE * _SELU_ALPHA)),
    softplus: lambda x, y, dy: dy * sigmoid(x),
    softsign: lambda x, y, dy: dy / (1.0 + np.abs(x)) ** 2,
    silu: lambda x, y, dy: dy * (sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)))),
    gelu: _gelu_grad,
    exponential: lambda x, y, dy: dy * y,
    hard_sigmoid: _hard_sigmoid_grad,
    hard_silu: _hard_silu_grad,
    gelu_tanh: _gelu_tanh_grad,
    mish: _mish_grad,
    celu: _celu_grad,
    log_sigmoid: lambda x, y, dy: dy * sigmoid(-x),
    glu: _glu_grad,
    hard_tanh: lambda x, y, dy: dy * ((x >= -1.0) & (x <= 1.0)),  # ClipByValue passes the ends
    tanh_shrink: lambda x, y, dy: dy * np.tanh(x) ** 2,
    soft_shrink: lambda x, y, dy: shrink_grad(x, y, dy),
    hard_shrink: lambda x, y, dy: shrink_grad(x, y, dy),
    squareplus: _squareplus_grad,
    sparse_plus: lambda x, y, dy: np.where(x <= -1, 0.0, np.where(x < 1, 0.5 * (x + 1) * dy, dy)),
    sparse_sigmoid: lambda x, y, dy: 0.5 * dy * ((x > -1) & (x < 1)),
}
# dy/dx written with the output y only, for the recurrent cells (which keep the gate
# outputs, not the pre-activations): sigmoid' = y (1 - y), tanh' = 1 - y^2.
OUTPUT_DERIVATIVES = {
    linear: lambda y: np.ones_like(y),
    relu: lambda y: (y > 0).astype(y.dtype),
    sigmoid: lambda y: y * (1.0 - y),
    tanh: lambda y: 1.0 - y * y,
}


def backward(fn, x, y, dy, where="layer"):
    """dL/dx for y = fn(x) (see :data:`GRADIENTS`)."""
    grad = GRADIENTS.get(fn)
    if grad is None:
        raise _no_gradient(fn, where, GRADIENTS)
    return grad(x, y, dy)


def output_derivative(fn, where="layer"):
    """The function y -> dy/dx for activation ``fn`` (see :data:`OUTPUT_DERIVATIVES`)."""
    d = OUTPUT_DERIVATIVES.get(fn)
    if d is None:
        raise _no_gradient(fn, where, OUTPUT_DERIVATIVES)
    return d


def name_of(fn):
    return next((k for k, v in ACTIVATIONS.items() if v is fn and k), getattr(fn, "__name__", str(fn)))


def _no_gradient(fn, where, table):
    return NoBackwardError(
        f"{where}: activation '{name_of(fn)}' has no backward pass in scratch_layers "
        f"(supported here: {', '.join(sorted(name_of(f) for f in table))}); predict() still works")
