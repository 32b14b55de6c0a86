"""Operation nodes of a Functional model (``keras.src.ops.*`` entries of config.json), forward
and backward: ``x * 0.5``, ``a + b``, ``keras.ops.relu(x)``, ``x[:, 1:3]``, ``ops.mean(x, axis=1)``...

An entry looks like ``{"module": "keras.src.ops.numpy", "class_name": "Multiply",
"config": {"name": "multiply"}, "inbound_nodes": [{"args": [<tensor>, 0.5], "kwargs": {}}]}``.
The op's own options (``axis``, ``newshape``, ``x_min``...) are in ``config``; the call's
arguments (tensors and constants) in ``args``/``kwargs``. :meth:`Op.split_call` binds them to
the Keras ``call`` signature: tensors (:class:`~scratch_layers.layers.layer.TensorRef`) become the
node's inputs and are replaced by :class:`Slot` markers in ``options["call"]``; constants are
decoded as data only (numbers, lists, ``__numpy__``/``__tensor__`` arrays of a numeric dtype,
``__slice__``, ``__ellipsis__``); anything else (``__lambda__``, ``__bytes__``...) is refused.

Masks: Keras operations do not propagate ``_keras_mask`` (an op returns a new tensor; only a
Layer's ``__call__`` sets masks), so every op's output mask is None, with one exception Keras
has by accident: ``ops.cast`` to the tensor's own dtype returns the same tensor object, mask
included (see :meth:`Cast.compute_mask`).

Backward: ``backward(dy) -> (dxs, [])``, one gradient per input (None for non-float or
non-differentiable inputs), the gradients TensorFlow registers for the ops Keras' TF backend
runs (summed back over broadcasting, scatter-add for indexing, ties of ``max``/``min``
reductions split evenly as TF's ``_MaxGrad``, ``maximum``/``minimum`` ties to the first
operand, ``clip`` passing at the bounds).
"""
import math

import numpy as np

from .. import activations as A
from ..errors import InputError, ModelFileError, UnsupportedLayerError
from ..ops import sum_to_shape
from .bounds import check_sample_elements
from .layer import MultiInputLayer, is_tensor

NUMERIC_DTYPES = {"float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64",
                  "uint8", "uint16", "uint32", "uint64", "bool"}
_NP_DTYPE = {"bfloat16": "float32"}


class Slot:
    """Where the i-th input tensor of a node goes in its call (``options["call"]``)."""
    __slots__ = ("index",)

    def __init__(self, index):
        self.index = index

    def __eq__(self, other):
        return isinstance(other, Slot) and other.index == self.index

    def __hash__(self):
        return hash(("Slot", self.index))

    def __repr__(self):
        return f"Slot({self.index})"


class Const:
    """A decoded ``__numpy__``/``__tensor__`` constant. Wrapped so that :meth:`Op.operands` can
    tell it from a tensor's array and cast it to the tensors' float dtype (Keras' float64
    twin and scratch's float32 mode alike); ``np.asarray(const)`` gives the array."""
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __array__(self, dtype=None, copy=None):
        return self.value if dtype is None else self.value.astype(dtype)

    def __repr__(self):
        return f"Const({self.value!r})"


def np_dtype(name, where):
    if isinstance(name, dict):  # a serialized DTypePolicy
        name = (name.get("config") or {}).get("name")
    if name not in NUMERIC_DTYPES:
        raise UnsupportedLayerError(f"{where}: dtype {name!r} is not supported "
                                    f"(supported: {sorted(NUMERIC_DTYPES)})")
    return np.dtype(_NP_DTYPE.get(name, name))


def decode_constant(obj, where):
    """A constant of a recorded call, decoded as data (never evaluated)."""
    if obj is None or isinstance(obj, (bool, int, float, str, slice, type(Ellipsis), Const,
                                       np.generic)):
        return obj
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf":
            raise UnsupportedLayerError(f"{where}: constant of dtype {obj.dtype} is not supported")
        return Const(obj)
        return obj
    if isinstance(obj, (list, tuple)):
        return type(obj)(decode_constant(v, where) for v in obj)
    if isinstance(obj, dict):
        name, cfg = obj.get("class_name"), obj.get("config") or {}
        if name in ("__numpy__", "__tensor__"):
            dtype = np_dtype(cfg.get("dtype"), where)
            try:
                value = np.array(cfg.get("value"), dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ModelFileError(f"{where}: malformed {name} constant: {e}") from None
            return Const(value)
        if name == "__slice__":
            parts = [decode_constant(cfg.get(k), where) for k in ("start", "stop", "step")]
            if not all(p is None or (isinstance(p, (int, np.integer)) and not isinstance(p, bool))
                       for p in parts):
                raise UnsupportedLayerError(f"{where}: slice bounds {parts} are not integers")
            return slice(*parts)
        if name == "__ellipsis__":
            return Ellipsis
        raise UnsupportedLayerError(
            f"{where}: argument of kind {name!r} is not supported (scratch_layers decodes only "
            "numbers, lists, numpy/tensor constants, slices and Ellipsis; it never runs code "
            "from a model file)")
    raise ModelFileError(f"{where}: unexpected argument {str(obj)[:80]!r}")


def _encode(value, inputs, where):
    if is_tensor(value):
        inputs.append(value)
        return Slot(len(inputs) - 1)
    if isinstance(value, (list, tuple)) and any(is_tensor(v) for v in value):
        return [_encode(v, inputs, where) for v in value]
    return decode_constant(value, where)


def _fill(spec, xs):
    if isinstance(spec, Slot):
        return xs[spec.index]
    if isinstance(spec, list) and any(isinstance(s, Slot) for s in spec):
        return [_fill(s, xs) for s in spec]
    return spec


def _is_float(a):
    return isinstance(a, np.ndarray) and a.dtype.kind == "f"


def broadcast_shape(*values):
    """The shape ``values`` broadcast to (no array is made), or None when they do not."""
    try:
        return np.broadcast_shapes(*(np.shape(v) for v in values))
    except ValueError:
        return None


def matmul_shape(a, b):
    """The shape of np.matmul(a, b) (a 1-D operand promoted, then its axis dropped), or
    None when the operands do not fit (np.matmul then says why)."""
    sa, sb = np.shape(a), np.shape(b)
    if not sa or not sb:
        return None
    ma = sa if len(sa) > 1 else (1,) + sa
    mb = sb if len(sb) > 1 else sb + (1,)
    if ma[-1] != mb[-2]:
        return None
    try:
        batch = np.broadcast_shapes(ma[:-2], mb[:-2])
    except ValueError:
        return None
    return batch + ma[-2:-1] * (len(sa) > 1) + mb[-1:] * (len(sb) > 1)


class Op(MultiInputLayer):
    """An operation node. Subclasses set ``params`` (the Keras ``call`` parameters, in
    order, with their defaults), ``options`` (config keys read at construction) and
    implement ``compute(**call)`` and ``grad(dy, y, **call) -> {param: gradient}``
    (gradients in the output's broadcast shape are summed back to each input's shape)."""

    params = (("x", None),)
    options = {}

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.where = f"{self.class_name} operation '{self.name}'"
        for key, default in self.options.items():
            setattr(self, key, config.get(key, default))
        self.setup()

    def setup(self):
        pass

    def split_call(self, args, kwargs):
        names = [p for p, _ in self.params]
        if len(args) > len(names):
            raise ModelFileError(f"{self.where}: called with {len(args)} positional arguments, "
                                 f"takes {names}")
        bound = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names or k in bound:
                raise UnsupportedLayerError(f"{self.where}: unexpected argument {k!r}")
            bound[k] = v
        inputs, call = [], {}
        for name, default in self.params:
            if name not in bound and default is REQUIRED:
                raise ModelFileError(f"{self.where}: argument {name!r} missing")
            call[name] = _encode(bound.get(name, default), inputs, self.where)
        self.check_call(call)
        return inputs, {"call": call}

    def check_call(self, call):
        pass

    def _bind(self, xs, call):
        if call is None:
            raise InputError(f"{self.where}: no call options (build it through split_call)")
        return {k: _fill(v, list(xs)) for k, v in call.items()}

    def forward(self, xs, masks=None, call=None):
        return self.compute(**self._bind(xs, call))

    def forward_train(self, xs, masks, ctx, call=None):
        kw = self._bind(xs, call)
        y = self.compute(**kw)
        self._saved = (call, kw, y, len(xs))
        return y

    def backward(self, dy, need_dx=True):
        call, kw, y, n = self._saved
        grads = self.grad(dy, y, **kw)
        dxs = [None] * n
        for name, spec in call.items():
            g = grads.get(name)
            if g is None:
                continue
            specs, vals, gs = ((spec, kw[name], g) if isinstance(spec, list)
                               else ([spec], [kw[name]], [g]))
            for s, v, gi in zip(specs, vals, gs):
                if isinstance(s, Slot) and gi is not None and _is_float(v):
                    gi = sum_to_shape(np.asarray(gi), v.shape).astype(v.dtype, copy=False)
                    dxs[s.index] = gi if dxs[s.index] is None else dxs[s.index] + gi
        return dxs, []

    def grad(self, dy, y, **call):
        raise self.no_backward()

    def compute_mask(self, xs, masks, **options):
        return None

    # helpers
    def operands(self, *values):
        """Cast constants (not arrays from tensors) to the float dtype of the tensor
        operands, as Keras' weak-typed scalars are; arrays are returned as they are."""
        floats = [v.dtype for v in values if _is_float(v)]
        dtype = np.result_type(*floats) if floats else None
        out = []
        for v in values:
            if isinstance(v, np.ndarray):  # a tensor's array
                out.append(v)
                continue
            c = np.asarray(v)
            if dtype is not None and c.dtype.kind in "iuf":
                c = c.astype(dtype)
            out.append(c)
        return out

    def check_output_size(self, shape, *values):
        """Before computing: an output of ``shape`` against
        :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS`. A config constant is
        bounded by the file's size, but broadcasting it against a tensor (a (10**5, 1)
        constant times a (1, 10**5) input) or against another constant is not. Per sample:
        when the output's first axis is the batch (the first axis of a tensor operand among
        ``values``), one sample is the rest; otherwise (a constant made the first axis) the
        whole output counts as one sample. ``shape`` None (operands that do not broadcast):
        nothing to check, the op itself reports it."""
        if shape is None:
            return
        batch = max((v.shape[0] for v in values if isinstance(v, np.ndarray) and v.ndim), default=None)
        check_sample_elements(self, shape[1:] if shape and shape[0] == batch else shape)

    def axis_option(self, value):
        if value is None:
            return None
        if isinstance(value, (list, tuple)):
            return tuple(int(a) for a in value)
        return int(value)


REQUIRED = object()
_X = (("x", REQUIRED),)
_X12 = (("x1", REQUIRED), ("x2", REQUIRED))


# ----------------------------------------------------------------------------- elementwise

class Unary(Op):
    """y = f(x) elementwise; ``fn``/``dfn(x, y, dy)`` on the float input."""
    params = _X

    def compute(self, x):
        x = np.asarray(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float64)
        return self.fn(x)

    def grad(self, dy, y, x):
        return {"x": self.dfn(np.asarray(x), y, dy)}


def _unary(name, fn, dfn, doc=""):
    return type(name, (Unary,), {"fn": staticmethod(fn), "dfn": staticmethod(dfn), "__doc__": doc})


def _sqrt_grad(x, y, dy):
    with np.errstate(divide="ignore", invalid="ignore"):
        return dy * 0.5 / y  # TF SqrtGrad: dy * 0.5 / y


Negative = _unary("Negative", np.negative, lambda x, y, dy: -dy)
Square = _unary("Square", np.square, lambda x, y, dy: dy * (2.0 * x))
Sqrt = _unary("Sqrt", np.sqrt, _sqrt_grad)
Absolute = _unary("Absolute", np.abs, lambda x, y, dy: dy * np.sign(x))
Exp = _unary("Exp", np.exp, lambda x, y, dy: dy * y)
Log = _unary("Log", np.log, lambda x, y, dy: dy / x)
Log1p = _unary("Log1p", np.log1p, lambda x, y, dy: dy / (1.0 + x))
Expm1 = _unary("Expm1", np.expm1, lambda x, y, dy: dy * (y + 1.0))
Tanh = _unary("Tanh", A.tanh, A.GRADIENTS[A.tanh])


class Activation(Unary):
    """A ``keras.src.ops.nn`` activation, computed by scratch_layers.activations (its
    function and its TF gradient, ``activations.GRADIENTS``)."""

    fn_name = None

    def setup(self):
        self.act = A.ACTIVATIONS[self.fn_name]

    def fn(self, x):
        return self.act(x)

    def dfn(self, x, y, dy):
        return A.backward(self.act, x, y, dy, self.where)


def _activation(name, fn_name):
    return type(name, (Activation,), {"fn_name": fn_name})


Relu = _activation("Relu", "relu")
Relu6 = _activation("Relu6", "relu6")
Sigmoid = _activation("Sigmoid", "sigmoid")
Silu = _activation("Silu", "silu")
HardSigmoid = _activation("HardSigmoid", "hard_sigmoid")
HardSilu = _activation("HardSilu", "hard_silu")
Selu = _activation("Selu", "selu")
Softplus = _activation("Softplus", "softplus")
Softsign = _activation("Softsign", "softsign")
LogSigmoid = _activation("LogSigmoid", "log_sigmoid")
HardTanh = _activation("HardTanh", "hard_tanh")
SparsePlus = _activation("SparsePlus", "sparse_plus")
TanhShrink = _activation("TanhShrink", "tanh_shrink")


class NumericOptions(Unary):
    """An activation op whose config options (``options``) are numbers: checked when built,
    kept as floats."""

    def setup(self):
        for key in self.options:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ModelFileError(f"{self.where}: {key}={str(value)[:40]!r} must be a number")
            setattr(self, key, float(value))


class SoftShrink(NumericOptions):
    """ops.soft_shrink(x, threshold): the activation's maths with the op's threshold."""
    options = {"threshold": 0.5}

    def fn(self, x):
        return A.soft_shrink(x, self.threshold)

    def dfn(self, x, y, dy):
        return A.shrink_grad(x, y, dy, self.threshold)


class HardShrink(SoftShrink):
    """ops.hard_shrink(x, threshold)."""

    def fn(self, x):
        return A.hard_shrink(x, self.threshold)


class Squareplus(NumericOptions):
    """ops.squareplus(x, b)."""
    options = {"b": 4}

    def fn(self, x):
        return A.squareplus(x, self.b)

    def dfn(self, x, y, dy):
        return A._squareplus_grad(x, y, dy, self.b)


class Threshold(NumericOptions):
    """ops.threshold(x, threshold, default_value): x where x > threshold, else
    default_value (a constant: no gradient)."""
    options = {"threshold": REQUIRED, "default_value": REQUIRED}

    def fn(self, x):
        return A.threshold(x, self.threshold, self.default_value)

    def dfn(self, x, y, dy):
        return A.threshold_grad(x, y, dy, self.threshold)


class Softmax(Unary):
    """ops.softmax(x, axis) (axis None: over every axis, batch included, as Keras' TF backend)."""
    options = {"axis": -1}

    def setup(self):
        self.axis = self.axis_option(self.axis)
        if isinstance(self.axis, tuple):
            raise self.unsupported("axis", self.axis, "a single axis or None")

    def fn(self, x):
        return A.softmax(x, axis=self.axis)

    def dfn(self, x, y, dy):
        return A.softmax_grad(x, y, dy, axis=self.axis)


class LogSoftmax(Softmax):
    def fn(self, x):
        return A.log_softmax(x, axis=self.axis)

    def dfn(self, x, y, dy):
        return A._log_softmax_grad(x, y, dy, axis=self.axis)


class Gelu(Unary):
    """ops.gelu(x, approximate=True) (the op's default is the tanh form)."""
    options = {"approximate": True}

    def fn(self, x):
        return A.gelu(x, approximate=bool(self.approximate))

    def dfn(self, x, y, dy):
        return (A._gelu_tanh_grad if self.approximate else A._gelu_grad)(x, y, dy)


class LeakyRelu(Unary):
    """tf.nn.leaky_relu(x, alpha=negative_slope); LeakyReluGrad passes dy where x > 0."""
    options = {"negative_slope": 0.2}

    def fn(self, x):
        return A.leaky_relu(x, float(self.negative_slope))

    def dfn(self, x, y, dy):
        return A.leaky_relu_grad(x, dy, float(self.negative_slope))


class Elu(Unary):
    """TF backend: res = elu(x); alpha != 1: where(x > 0, res, alpha res).
    Gradient: dy where x > 0, else alpha exp(x) dy = dy (y + alpha)."""
    options = {"alpha": 1.0}

    def fn(self, x):
        return A.elu(x, float(self.alpha))

    def dfn(self, x, y, dy):
        return np.where(x > 0, dy, dy * (y + float(self.alpha)))


class Celu(Unary):
    options = {"alpha": 1.0}

    def fn(self, x):
        return A.celu(x, float(self.alpha))

    def dfn(self, x, y, dy):
        return A._celu_grad(x, y, dy, float(self.alpha))


class Clip(Unary):
    """tf.clip_by_value(x, x_min, x_max); the gradient passes where x_min <= x <= x_max."""
    options = {"x_min": None, "x_max": None}

    def setup(self):
        self.lo = np.asarray(decode_constant(self.x_min, self.where))
        self.hi = np.asarray(decode_constant(self.x_max, self.where))

    def compute(self, x):
        x = np.asarray(x)
        lo, hi = (np.asarray(v, x.dtype) if x.dtype.kind == "f" else v for v in (self.lo, self.hi))
        self.check_output_size(broadcast_shape(x, lo, hi), x)
        return np.minimum(np.maximum(x, lo), hi)

    def grad(self, dy, y, x):
        return {"x": np.where((x < self.lo) | (x > self.hi), 0, dy)}


class Binary(Op):
    """y = f(x1, x2) with broadcasting; either operand may be a constant."""
    params = _X12

    def compute(self, x1, x2):
        self.check_output_size(broadcast_shape(x1, x2), x1, x2)
        a, b = self.operands(x1, x2)
        return self.fn(a, b)

    def grad(self, dy, y, x1, x2):
        a, b = self.operands(x1, x2)
        g1, g2 = self.dfn(a, b, y, dy)
        return {"x1": g1, "x2": g2}


def _binary(name, fn, dfn, doc=""):
    return type(name, (Binary,), {"fn": staticmethod(fn), "dfn": staticmethod(dfn), "__doc__": doc})


def _div_grad(a, b, y, dy):
    """TF RealDiv: gx = dy / y; gy = dy * ((-x / y) / y)."""
    return dy / b, dy * ((-a / b) / b)


def _pow_grad(a, b, y, dy):
    """TF _PowGrad: gx = dy * y_exp * x^(y_exp - 1); gy = dy * z * log(x) where x > 0, else 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        gx = dy * b * np.power(a, b - 1)
        pos = a > 0
        gy = dy * y * np.where(pos, np.log(np.where(pos, a, 1)), 0)
    return gx, gy


Add = _binary("Add", np.add, lambda a, b, y, dy: (dy, dy))
Subtract = _binary("Subtract", np.subtract, lambda a, b, y, dy: (dy, -dy))
Multiply = _binary("Multiply", np.multiply, lambda a, b, y, dy: (dy * b, a * dy))
Divide = _binary("Divide", np.true_divide, _div_grad)
TrueDivide = _binary("TrueDivide", np.true_divide, _div_grad)
Power = _binary("Power", np.power, _pow_grad)
Maximum = _binary("Maximum", np.maximum,
                  lambda a, b, y, dy: (np.where(a >= b, dy, 0), np.where(a >= b, 0, dy)),
                  "TF _MaximumGrad: x1 gets the gradient where x1 >= x2.")
Minimum = _binary("Minimum", np.minimum,
                  lambda a, b, y, dy: (np.where(a <= b, dy, 0), np.where(a <= b, 0, dy)),
                  "TF _MinimumGrad: x1 gets the gradient where x1 <= x2.")


class Comparison(Binary):
    """Boolean result, no gradient."""

    def grad(self, dy, y, x1, x2):
        return {}


def _comparison(name, fn):
    return type(name, (Comparison,), {"fn": staticmethod(fn)})


Greater = _comparison("Greater", np.greater)
GreaterEqual = _comparison("GreaterEqual", np.greater_equal)
Less = _comparison("Less", np.less)
LessEqual = _comparison("LessEqual", np.less_equal)
Equal = _comparison("Equal", np.equal)
NotEqual = _comparison("NotEqual", np.not_equal)
LogicalAnd = _comparison("LogicalAnd", np.logical_and)
LogicalOr = _comparison("LogicalOr", np.logical_or)
LogicalXor = _comparison("LogicalXor", np.logical_xor)


class LogicalNot(Unary):
    def compute(self, x):
        return np.logical_not(x)

    def grad(self, dy, y, x):
        return {}


class Where(Op):
    """ops.where(condition, x1, x2) (the one-argument form, nonzero(), is refused)."""
    params = (("condition", REQUIRED), ("x1", None), ("x2", None))

    def check_call(self, call):
        if call["x1"] is None or call["x2"] is None:
            raise UnsupportedLayerError(f"{self.where}: where(condition) without x1/x2 "
                                        "(nonzero) has a data-dependent shape; not supported")

    def compute(self, condition, x1, x2):
        self.check_output_size(broadcast_shape(condition, x1, x2), condition, x1, x2)
        a, b = self.operands(x1, x2)
        return np.where(np.asarray(condition, bool), a, b)

    def grad(self, dy, y, condition, x1, x2):
        c = np.asarray(condition, bool)
        return {"x1": np.where(c, dy, 0), "x2": np.where(c, 0, dy)}


class Matmul(Op):
    """np.matmul semantics (batch broadcasting; a 1-D operand is promoted and squeezed)."""
    params = _X12

    def compute(self, x1, x2):
        self.check_output_size(matmul_shape(x1, x2), x1, x2)
        a, b = self.operands(x1, x2)
        return np.matmul(a, b)

    def grad(self, dy, y, x1, x2):
        a, b = self.operands(x1, x2)
        a2 = a[None, :] if a.ndim == 1 else a
        b2 = b[:, None] if b.ndim == 1 else b
        g = dy
        if b.ndim == 1:
            g = g[..., None]
        if a.ndim == 1:
            g = np.expand_dims(g, -2)
        ga = np.matmul(g, np.swapaxes(b2, -1, -2))
        gb = np.matmul(np.swapaxes(a2, -1, -2), g)
        ga = sum_to_shape(ga, a2.shape).reshape(a.shape)
        gb = sum_to_shape(gb, b2.shape).reshape(b.shape)
        return {"x1": ga, "x2": gb}


class Cast(Unary):
    """ops.cast(x, dtype). Float -> float keeps the input's float dtype (scratch_layers computes
    in one precision: float64, or float32 with load_model(dtype="float32")); an integer/bool
    input cast to a float becomes ``self.float_dtype`` (float64 unless the executor sets it)."""
    options = {"dtype": None}
    float_dtype = np.float64

    def setup(self):
        self.target = np_dtype(self.dtype, self.where)

    def compute(self, x):
        x = np.asarray(x)
        if self.target.kind == "f":
            return x if x.dtype.kind == "f" else x.astype(self.float_dtype)
        return x.astype(self.target)

    def grad(self, dy, y, x):
        return {"x": dy if self.target.kind == "f" else None}

    def compute_mask(self, xs, masks, **options):
        """tf.cast to the tensor's own dtype returns the tensor itself, so its Keras mask
        survives; a float -> float cast counts as such when the target is float32 (the dtype
        of a Keras float32 model's tensors, which scratch's float64 computes stand for)."""
        x = np.asarray(xs[0])
        same = (x.dtype == self.target) or (x.dtype.kind == "f" and self.target == np.float32)
        return masks[0] if (same and masks) else None


# ----------------------------------------------------------------------------- shapes

class Reshape(Unary):
    options = {"newshape": None}

    def setup(self):
        ns = self.newshape
        if isinstance(ns, int):
            ns = [ns]
        if not isinstance(ns, (list, tuple)) or not all(
                isinstance(d, int) and not isinstance(d, bool) for d in ns):
            raise self.unsupported("newshape", self.newshape, "a list of ints")
        self.shape = tuple(ns)

    def compute(self, x):
        try:
            return np.reshape(x, self.shape)
        except ValueError:
            raise InputError(f"{self.where}: cannot reshape {np.shape(x)} to {self.shape}") from None

    def grad(self, dy, y, x):
        return {"x": dy.reshape(np.shape(x))}


class Transpose(Unary):
    options = {"axes": None}

    def compute(self, x):
        axes = None if self.axes is None else tuple(int(a) for a in self.axes)
        return np.transpose(x, axes)

    def grad(self, dy, y, x):
        axes = (tuple(range(np.ndim(x)))[::-1] if self.axes is None
                else tuple(int(a) % np.ndim(x) for a in self.axes))
        return {"x": np.transpose(dy, np.argsort(axes))}


class ExpandDims(Unary):
    options = {"axis": None}

    def compute(self, x):
        return np.expand_dims(x, self.axis_option(self.axis))

    def grad(self, dy, y, x):
        return {"x": dy.reshape(np.shape(x))}


class Squeeze(Unary):
    options = {"axis": None}

    def compute(self, x):
        axis = self.axis_option(self.axis)
        try:
            return np.squeeze(x, axis)
        except ValueError:
            raise InputError(f"{self.where}: cannot squeeze axis {axis} of shape "
                             f"{np.shape(x)}") from None

    def grad(self, dy, y, x):
        return {"x": dy.reshape(np.shape(x))}


def _basic_key(key, where):
    if isinstance(key, list):
        key = tuple(key)
    parts = key if isinstance(key, tuple) else (key,)
    for p in parts:
        ok = (p is None or p is Ellipsis or isinstance(p, slice)
              or (isinstance(p, (int, np.integer)) and not isinstance(p, bool)))
        if not ok:
            raise UnsupportedLayerError(f"{where}: index {p!r} is not supported (ints, slices, "
                                        "None and Ellipsis are)")
    return key


class GetItem(Op):
    """x[key] with ints, slices, None (newaxis) and Ellipsis (what Keras' GetItem accepts
    symbolically). Backward scatters dy into zeros (basic indexing never repeats an element)."""
    params = (("x", REQUIRED), ("key", REQUIRED))

    def check_call(self, call):
        if isinstance(call["key"], Slot) or (isinstance(call["key"], list) and any(
                isinstance(k, Slot) for k in call["key"])):
            raise UnsupportedLayerError(f"{self.where}: indexing with a tensor is not supported")
        call["key"] = _basic_key(call["key"], self.where)

    def compute(self, x, key):
        try:
            return np.array(np.asarray(x)[key])
        except IndexError as e:
            raise InputError(f"{self.where}: index {key!r} does not fit shape "
                             f"{np.shape(x)}: {e}") from None

    def grad(self, dy, y, x, key):
        dx = np.zeros(np.shape(x), dtype=dy.dtype)
        dx[key] = dy
        return {"x": dx}


class Concatenate(Op):
    params = (("xs", REQUIRED),)
    options = {"axis": 0}

    def compute(self, xs):
        xs = list(xs)
        try:
            return np.concatenate(self.operands(*xs), axis=int(self.axis))
        except ValueError as e:
            raise InputError(f"{self.where}: {e}") from None

    def grad(self, dy, y, xs):
        sizes = [np.shape(x)[int(self.axis)] for x in xs]
        return {"xs": np.split(dy, np.cumsum(sizes)[:-1], axis=int(self.axis))}


class Stack(Op):
    params = (("x", REQUIRED),)
    options = {"axis": 0}

    def compute(self, x):
        try:
            return np.stack(self.operands(*list(x)), axis=int(self.axis))
        except ValueError as e:
            raise InputError(f"{self.where}: {e}") from None

    def grad(self, dy, y, x):
        return {"x": list(np.moveaxis(dy, int(self.axis), 0))}


# ----------------------------------------------------------------------------- reductions

class Reduce(Unary):
    options = {"axis": None, "keepdims": False}

    def setup(self):
        self.ax = self.axis_option(self.axis)

    def kept(self, dy, x):
        """dy with the reduced axes restored as size 1."""
        if self.keepdims:
            return dy
        axes = range(np.ndim(x)) if self.ax is None else (
            (self.ax,) if isinstance(self.ax, int) else self.ax)
        return np.expand_dims(dy, tuple(sorted(a % np.ndim(x) for a in axes)))

    def count(self, x):
        shape = np.shape(x)
        axes = range(len(shape)) if self.ax is None else (
            (self.ax,) if isinstance(self.ax, int) else self.ax)
        return int(np.prod([shape[a] for a in axes]))


class Sum(Reduce):
    def fn(self, x):
        return np.sum(x, axis=self.ax, keepdims=bool(self.keepdims))

    def dfn(self, x, y, dy):
        return np.broadcast_to(self.kept(dy, x), np.shape(x))


class Mean(Reduce):
    def fn(self, x):
        return np.mean(x, axis=self.ax, keepdims=bool(self.keepdims))

    def dfn(self, x, y, dy):
        return np.broadcast_to(self.kept(dy, x) / self.count(x), np.shape(x))


class Max(Reduce):
    """reduce_max, then maximum(., initial) when given. TF's _MaxGrad splits the gradient
    evenly among the tied maxima."""
    options = {"axis": None, "keepdims": False, "initial": None}
    reduce, pick = staticmethod(np.max), staticmethod(np.greater_equal)

    def fn(self, x):
        r = self.reduce(x, axis=self.ax, keepdims=bool(self.keepdims))
        if self.initial is not None:
            self.check_output_size(broadcast_shape(r, self.initial), x)  # x's first axis: the batch
            r = np.maximum(r, self.initial) if self.reduce is np.max else np.minimum(r, self.initial)
        return r

    def dfn(self, x, y, dy):
        r = self.reduce(x, axis=self.ax, keepdims=True)
        dr = self.kept(dy, x)
        if self.initial is not None:  # maximum(r, initial): r gets it where r >= initial
            dr = np.where(self.pick(r, self.initial), dr, 0)
        hit = (x == r).astype(dy.dtype)
        return hit / np.sum(hit, axis=self.ax, keepdims=True) * dr


class Min(Max):
    reduce, pick = staticmethod(np.min), staticmethod(np.less_equal)


# ----------------------------------------------------------------------------- arange

def arange_length(start, stop, step):
    """``(len(np.arange(start, stop, step)),)`` computed as numpy does (ceil((stop - start)
    / step), at least 0; exact for ints), without making the array: a constant stop of
    10**12 in a config is a few bytes. None when numpy would refuse the arguments itself
    (step 0, a NaN or infinite length)."""
    try:
        if all(isinstance(v, (int, np.integer)) for v in (start, stop, step)):
            n = -((int(start) - int(stop)) // int(step))
        else:
            n = math.ceil((stop - start) / step)
    except (ZeroDivisionError, OverflowError, ValueError, TypeError):
        return None
    return (max(n, 0),)


class Arange(Op):
    """ops.arange(start, stop, step, dtype): only a node when an argument is a tensor (a
    scalar); dtype None: int32 for integer arguments, else the float compute dtype."""
    params = (("start", REQUIRED), ("stop", None), ("step", None))
    options = {"dtype": None}
    float_dtype = np.float64

    def compute(self, start, stop, step):
        vals = [v if v is None else np.asarray(v).item() for v in (start, stop, step)]
        if self.dtype is not None:
            dtype = np_dtype(self.dtype, self.where)
            if dtype.kind == "f":
                dtype = np.dtype(self.float_dtype)
        elif any(isinstance(v, float) for v in vals):
            dtype = np.dtype(self.float_dtype)
        else:
            dtype = np.dtype(np.int32)
        start, stop, step = vals
        if stop is None:
            start, stop = 0, start
        step = 1 if step is None else step
        self.check_output_size(arange_length(start, stop, step))
        return np.arange(start, stop, step, dtype=dtype)

    def grad(self, dy, y, **call):
        return {}


# ----------------------------------------------------------------------------- registry

class _Unsupported:
    """Constructor of an operation scratch_layers does not implement: raises on construction."""

    def __init__(self, class_name):
        self.class_name = class_name

    def __call__(self, config, weights, class_name=None):
        raise UnsupportedLayerError(
            f"operation {self.class_name!r} ('{(config or {}).get('name', '?')}') is not supported "
            f"by scratch_layers; supported operations: {', '.join(sorted(OPS))}")


class _OpTable(dict):
    """OPS[name] -> constructor; an unknown name gives a constructor that raises
    UnsupportedLayerError naming the op (``name in OPS`` stays False)."""

    def __missing__(self, class_name):
        return _Unsupported(class_name)


OPS = _OpTable({cls.__name__: cls for cls in (
    Add, Subtract, Multiply, Divide, TrueDivide, Power, Negative, Square, Sqrt, Absolute, Exp,
    Log, Log1p, Expm1, Maximum, Minimum, Clip, Where, Greater, GreaterEqual, Less, LessEqual,
    Equal, NotEqual, LogicalAnd, LogicalOr, LogicalXor, LogicalNot, Relu, Relu6, Sigmoid, Tanh, Softmax, LogSoftmax, Gelu, Silu, HardSigmoid,
    HardSilu, LeakyRelu, Elu, Selu, Celu, Softplus, Softsign, LogSigmoid, HardTanh, SparsePlus,
    TanhShrink, SoftShrink, HardShrink, Squareplus, Threshold, Reshape, Transpose,
    ExpandDims, Squeeze, GetItem, Arange, Concatenate, Stack, Mean, Sum, Max, Min, Matmul, Cast)})
OPS["Abs"] = Absolute


def make_op(class_name, config):
    """Build the op of a config.json entry (raises UnsupportedLayerError for unknown ones)."""
    return OPS[class_name](config, [], class_name)
