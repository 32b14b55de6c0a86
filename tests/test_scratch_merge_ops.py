"""Merge layers (scratch_layers/layers/merge.py) and operation nodes (scratch_layers/layers/operations.py)
against Keras: forward vs the float64 Keras layer/op (1e-9 relative to the output scale)
and the float32 one (atol 1e-5, rtol 1e-5); backward (one gradient per input) vs
tf.GradientTape of sum(y * dy) in float64 (atol 1e-9, rtol 1e-7); masks as Keras
propagates them. Scratch objects are built from the Keras config (merges) and from the
recorded call ``split_call(args, kwargs)`` with TensorRef placeholders (ops)."""
import json
import os
import sys
import zipfile

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras  # noqa: E402

from scratch_layers.layers.layer import TensorRef  # noqa: E402
from scratch_layers.layers.registry import REGISTRY  # noqa: E402

pytestmark = pytest.mark.scratch

TWIN_REL = 1e-9
F32_TOL = 1e-5
GRAD_ATOL, GRAD_RTOL = 1e-9, 1e-7


def tf():
    import tensorflow
    return tensorflow


def rand(shape, seed, ties=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, shape)
    if ties:  # few distinct values: Maximum/Minimum ties
        x = np.round(x * 2) / 2
    return x


def check_forward(got, ref64, ref32=None, what=""):
    ref64 = np.asarray(ref64)
    assert got.shape == ref64.shape, (what, got.shape, ref64.shape)
    scale = max(1.0, float(np.abs(ref64).max()) if ref64.size else 0.0)
    d64 = float(np.abs(got - ref64).max()) if got.size else 0.0
    assert d64 <= TWIN_REL * scale, f"{what}: vs float64 Keras {d64:.3g}"
    d32 = 0.0
    if ref32 is not None:
        ref32 = np.asarray(ref32, np.float64)
        d32 = float(np.abs(got - ref32).max()) if got.size else 0.0
        assert np.allclose(got, ref32, atol=F32_TOL, rtol=F32_TOL), f"{what}: vs float32 {d32:.3g}"
    return d64, d32


def check_grads(dxs, tgrads, what=""):
    worst = 0.0
    for i, (g, t) in enumerate(zip(dxs, tgrads)):
        t = np.zeros_like(g) if t is None else np.asarray(t)
        assert g.shape == t.shape, (what, i, g.shape, t.shape)
        assert np.allclose(g, t, atol=GRAD_ATOL, rtol=GRAD_RTOL), (
            f"{what}: input {i} grad max|diff| {np.abs(g - t).max():.3g}")
        worst = max(worst, float(np.abs(g - t).max()) if g.size else 0.0)
    return worst


def keras_run(fn, xs, masks=None, dy=None, dtype="float64"):
    """fn(list of tf tensors) in eager mode, masks attached as Keras does; returns
    (y, output mask, grads of sum(y * dy) w.r.t. the inputs)."""
    T = tf()
    from keras.src import backend
    ts = [T.constant(np.asarray(x, dtype)) for x in xs]
    with T.GradientTape() as tape:
        for t in ts:
            tape.watch(t)
        if masks is not None:
            for t, m in zip(ts, masks):
                if m is not None:
                    backend.set_keras_mask(t, T.constant(m))
        y = fn(ts)
        loss = T.reduce_sum(y * T.constant(np.asarray(dy, dtype))) if dy is not None else None
    out_mask = backend.get_keras_mask(y)
    grads = tape.gradient(loss, ts) if dy is not None else None
    return (np.asarray(y), None if out_mask is None else np.asarray(out_mask),
            None if grads is None else [None if g is None else np.asarray(T.convert_to_tensor(g))
                                        for g in grads])


# ----------------------------------------------------------------------------- merges

MERGE_CASES = [
    # (class name, kwargs, input shapes, with masks)
    ("Add", {}, [(4, 3, 5), (4, 3, 5), (4, 3, 5)], False),
    ("Add", {}, [(4, 3, 5), (4, 1, 5)], False),
    ("Add", {}, [(4, 3, 5), (4, 5)], False),           # rank expansion at axis 1
    ("Subtract", {}, [(4, 6), (4, 1)], False),
    ("Average", {}, [(4, 3, 5), (4, 3, 1), (4, 3, 5)], False),
    ("Multiply", {}, [(4, 3, 5), (4, 3, 5), (4, 1, 5)], False),
    ("Multiply", {}, [(4, 3, 5), (4, 3, 5)], True),
    ("Multiply", {}, [(4, 3, 5), (4, 3, 5)], "first"),
    ("Maximum", {}, [(4, 3, 5), (4, 3, 5), (4, 3, 5)], False),
    ("Maximum", {}, [(4, 3, 5), (4, 1, 5)], False),
    ("Maximum", {}, [(4, 3, 5), (4, 3, 5), (4, 3, 5)], True),
    ("Maximum", {}, [(4, 3, 5), (4, 3, 5), (4, 3, 5)], "first"),
    ("Minimum", {}, [(4, 3, 5), (4, 3, 5)], True),
    ("Minimum", {}, [(4, 6), (4, 6), (4, 1)], False),
    ("Average", {}, [(4, 3, 5), (4, 3, 5)], True),
    ("Concatenate", {}, [(4, 3, 5), (4, 3, 2)], True),
    ("Concatenate", {"axis": 1}, [(4, 3, 5), (4, 2, 5), (4, 1, 5)], "first"),
    ("Concatenate", {"axis": -2}, [(4, 3, 2, 5), (4, 3, 4, 5)], False),
    ("Dot", {"axes": -1}, [(4, 6), (4, 6)], False),
    ("Dot", {"axes": 1}, [(4, 6), (4, 6, 3)], False),
    ("Dot", {"axes": [2, 1]}, [(4, 3, 6), (4, 6, 5)], False),
    ("Dot", {"axes": [-1, -1]}, [(4, 3, 6), (4, 5, 6)], False),
    ("Dot", {"axes": [1, 3], "normalize": True}, [(4, 6, 2, 3), (4, 2, 5, 6)], False),
    ("Dot", {"axes": 2, "normalize": True}, [(4, 3, 5), (4, 2, 5)], False),
    ("Dot", {"axes": -1, "normalize": True}, [(4, 5), (4, 3, 5)], False),
]


def _masks(shapes, kind, seed):
    if not kind:
        return None
    rng = np.random.default_rng(seed + 100)
    masks = [rng.random(s[:2]) > 0.4 for s in shapes]
    if kind == "first":
        masks[1:] = [None] * (len(masks) - 1)
    return masks


@pytest.mark.parametrize("case", range(len(MERGE_CASES)),
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(MERGE_CASES)])
def test_merge_layer(case, record_property):
    name, kwargs, shapes, masked = MERGE_CASES[case]
    k = keras()
    ties = name in ("Maximum", "Minimum")
    xs = [rand(s, seed=case * 10 + i, ties=ties) for i, s in enumerate(shapes)]
    masks = _masks(shapes, masked, case)
    layer64 = getattr(k.layers, name)(dtype="float64", **kwargs)
    layer32 = getattr(k.layers, name)(**kwargs)
    y64, m64, _ = keras_run(layer64, xs, masks)
    dy = rand(y64.shape, seed=case + 7)
    y64, m64, g64 = keras_run(layer64, xs, masks, dy)
    y32, m32, _ = keras_run(layer32, xs, masks, dtype="float32")

    config = json.loads(json.dumps(layer64.get_config()))  # as in config.json
    sl = REGISTRY[name](config, [], name)
    inputs, options = sl.split_call([[TensorRef(f"in{i}") for i in range(len(xs))]], {})
    assert [t.layer for t in inputs] == [f"in{i}" for i in range(len(xs))] and options == {}
    got = sl.forward(xs, masks)
    d64, d32 = check_forward(got, y64, y32, name)

    # output mask: Keras sets it inside the merge or through compute_mask
    if name != "Dot" and masks is not None and m64 is None:
        m64 = layer64.compute_mask([k.ops.convert_to_tensor(x) for x in xs],
                                   [None if m is None else k.ops.convert_to_tensor(m) for m in masks])
        m64 = None if m64 is None else np.asarray(m64)
    sm = sl.compute_mask(xs, masks)
    assert (sm is None) == (m64 is None), (sm, m64)
    if sm is not None:
        np.testing.assert_array_equal(sm, m64)

    y_train = sl.forward_train(xs, masks, None)
    np.testing.assert_array_equal(y_train, got)
    dxs, grads = sl.backward(dy)
    assert grads == []
    dg = check_grads(dxs, g64, name)

    # float32 scratch stays float32 and within 1e-5 of Keras float32
    got32 = sl.forward([x.astype(np.float32) for x in xs], masks)
    assert got32.dtype == np.float32
    assert np.allclose(got32, y32, atol=F32_TOL, rtol=F32_TOL)
    record_property("max_abs_diff_float64", d64)
    record_property("max_abs_diff_float32", d32)
    record_property("max_grad_diff_float64", dg)


# ----------------------------------------------------------------------------- operation nodes

from scratch_layers.layers import operations as sops  # noqa: E402


def refs_from_config(obj):
    """A recorded call as the graph executor hands it over: every ``__keras_tensor__``
    replaced by a TensorRef (everything else left as in config.json)."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return TensorRef(*obj["config"]["keras_history"])
        return {k: refs_from_config(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [refs_from_config(v) for v in obj]
    return obj


def recorded_op(out):
    """(class name, config.json-style config, args, kwargs) of the op that made KerasTensor ``out``."""
    from keras.src.models.functional import serialize_node
    op, node_index, _ = out._keras_history
    node = json.loads(json.dumps(serialize_node(op._inbound_nodes[node_index])))
    config = json.loads(json.dumps(op.get_config()))
    return type(op).__name__, config, refs_from_config(node["args"]), refs_from_config(node["kwargs"])


def _pos(shape, seed):
    return np.abs(rand(shape, seed)) + 0.3


S = (4, 3, 5)
# (id, fn(ops, *tensors), input shapes (batch first), input kinds: "n" normal, "t" ties,
#  "p" positive, "b" bool, "i" int32)
OP_CASES = [
    ("add", lambda o, a, b: o.add(a, b), [(4, 6), (4, 1)], "nn"),
    ("add-scalar", lambda o, a: o.add(a, 1.5), [(4, 6)], "n"),
    ("add-numpy", lambda o, a: o.add(np.arange(6, dtype="float32") / 7, a), [(4, 6)], "n"),
    ("add-tensor", lambda o, a: o.add(a, o.arange(6, dtype="float32") / 7), [(4, 6)], "n"),
    ("subtract-rscalar", lambda o, a: o.subtract(2.0, a), [(4, 6)], "n"),
    ("multiply", lambda o, a, b: o.multiply(a, b), [S, (4, 1, 5)], "nn"),
    ("multiply-self", lambda o, a: o.multiply(a, a), [(4, 6)], "n"),
    ("divide", lambda o, a, b: o.divide(a, b), [(4, 6), (4, 6)], "np"),
    ("true_divide", lambda o, a: o.true_divide(a, 3), [(4, 6)], "n"),
    ("power", lambda o, a: o.power(a, 2.5), [(4, 6)], "p"),
    ("power-int", lambda o, a: o.power(a, 2), [(4, 6)], "n"),
    ("power-tensors", lambda o, a, b: o.power(a, b), [(4, 6), (4, 6)], "pn"),
    ("negative", lambda o, a: o.negative(a), [(4, 6)], "n"),
    ("square", lambda o, a: o.square(a), [(4, 6)], "n"),
    ("sqrt", lambda o, a: o.sqrt(a), [(4, 6)], "p"),
    ("absolute", lambda o, a: o.abs(a), [(4, 6)], "t"),
    ("exp", lambda o, a: o.exp(a), [(4, 6)], "n"),
    ("log", lambda o, a: o.log(a), [(4, 6)], "p"),
    ("log1p", lambda o, a: o.log1p(a), [(4, 6)], "p"),
    ("expm1", lambda o, a: o.expm1(a), [(4, 6)], "n"),
    ("maximum", lambda o, a, b: o.maximum(a, b), [(4, 6), (4, 6)], "tt"),
    ("maximum-scalar", lambda o, a: o.maximum(a, 0.5), [(4, 6)], "t"),
    ("minimum", lambda o, a, b: o.minimum(a, b), [S, (4, 1, 5)], "tt"),
    ("clip", lambda o, a: o.clip(a, -0.5, 1), [(4, 6)], "t"),
    ("where", lambda o, c, a, b: o.where(c, a, b), [(4, 6), (4, 6), (4, 1)], "bnn"),
    ("greater", lambda o, a: o.greater(a, 0.0), [(4, 6)], "t"),
    ("less_equal", lambda o, a, b: o.less_equal(a, b), [(4, 6), (4, 6)], "tt"),
    ("relu", lambda o, a: o.relu(a), [(4, 6)], "t"),
    ("relu6", lambda o, a: o.relu6(a), [(4, 6)], "w"),
    ("sigmoid", lambda o, a: o.sigmoid(a), [(4, 6)], "n"),
    ("tanh", lambda o, a: o.tanh(a), [(4, 6)], "n"),
    ("softmax", lambda o, a: o.softmax(a, axis=1), [S], "n"),
    ("log_softmax", lambda o, a: o.log_softmax(a), [S], "n"),
    ("gelu-tanh", lambda o, a: o.gelu(a), [(4, 6)], "n"),
    ("silu", lambda o, a: o.silu(a), [(4, 6)], "n"),
    ("swish", lambda o, a: o.swish(a), [(4, 6)], "n"),
    ("hard_sigmoid", lambda o, a: o.hard_sigmoid(a), [(4, 6)], "w"),
    ("hard_silu", lambda o, a: o.hard_silu(a), [(4, 6)], "w"),
    ("leaky_relu", lambda o, a: o.leaky_relu(a, 0.1), [(4, 6)], "n"),
    ("elu", lambda o, a: o.elu(a, 0.7), [(4, 6)], "n"),
    ("selu", lambda o, a: o.selu(a), [(4, 6)], "n"),
    ("celu", lambda o, a: o.celu(a, 0.8), [(4, 6)], "n"),
    ("softplus", lambda o, a: o.softplus(a), [(4, 6)], "n"),
    ("softsign", lambda o, a: o.softsign(a), [(4, 6)], "n"),
    ("log_sigmoid", lambda o, a: o.log_sigmoid(a), [(4, 6)], "n"),
    ("reshape", lambda o, a: o.reshape(a, (-1, 15)), [S], "n"),
    ("transpose", lambda o, a: o.transpose(a, (0, 2, 1)), [S], "n"),
    ("expand_dims", lambda o, a: o.expand_dims(a, 1), [(4, 6)], "n"),
    ("expand_dims-2", lambda o, a: o.expand_dims(a, (1, -1)), [(4, 6)], "n"),
    ("squeeze", lambda o, a: o.squeeze(a, 1), [(4, 1, 5)], "n"),
    ("squeeze-all", lambda o, a: o.squeeze(a), [(4, 1, 5, 1)], "n"),
    ("getitem-slice", lambda o, a: a[:, 1:3], [S], "n"),
    ("getitem-newaxis", lambda o, a: a[..., None, 0], [S], "n"),
    ("getitem-reverse", lambda o, a: a[:, ::-1, 2], [S], "n"),
    ("getitem-mixed", lambda o, a: a[:, 1, None, ..., 0:4:2], [(4, 3, 2, 5)], "n"),
    ("getitem-last", lambda o, a: a[:, -1], [S], "n"),
    ("getitem-batch", lambda o, a: a[1:3, :], [S], "n"),
    ("concatenate", lambda o, a, b: o.concatenate([a, b], axis=-1), [(4, 6), (4, 2)], "nn"),
    ("concatenate-1", lambda o, a, b: o.concatenate([b, a, b], axis=1), [S, (4, 2, 5)], "nn"),
    ("stack", lambda o, a, b: o.stack([a, b], axis=1), [(4, 6), (4, 6)], "nn"),
    ("mean", lambda o, a: o.mean(a, axis=1, keepdims=True), [S], "n"),
    ("mean-all", lambda o, a: o.mean(a), [S], "n"),
    ("sum", lambda o, a: o.sum(a, axis=(1, 2)), [S], "n"),
    ("max", lambda o, a: o.max(a, axis=-1), [S], "t"),
    ("max-initial", lambda o, a: o.max(a, axis=(1, 2), keepdims=True, initial=0.5), [S], "t"),
    ("min", lambda o, a: o.min(a, axis=(1, -1)), [(4, 3, 2, 5)], "t"),
    ("matmul", lambda o, a, b: o.matmul(a, b), [(4, 2, 3, 5), (4, 1, 5, 2)], "nn"),
    ("matmul-const", lambda o, a: o.matmul(a, np.linspace(-1, 1, 10, dtype="float32").reshape(5, 2)),
     [S], "n"),
    ("cast-int", lambda o, a: o.cast(a, "float32") * 0.5, [(4, 6)], "i"),
]


def _op_inputs(shapes, kinds, seed):
    xs = []
    for i, (shape, kind) in enumerate(zip(shapes, kinds)):
        s = seed * 10 + i
        xs.append({"n": lambda: rand(shape, s), "t": lambda: rand(shape, s, ties=True),
                   "p": lambda: _pos(shape, s), "w": lambda: rand(shape, s, ties=True) * 4, "b": lambda: rand(shape, s) > 0,
                   "i": lambda: np.round(rand(shape, s) * 3)}[kind]())
    return xs


def _keras_dtype(kind, dtype):
    return {"b": "bool", "i": "int32"}.get(kind, dtype)




def _op_case_parts(case):
    name, fn, shapes, kinds = OP_CASES[case]
    k = keras()
    inputs = [k.Input(s[1:], dtype=_keras_dtype(kd, "float32"), name=f"in{i}")
              for i, (s, kd) in enumerate(zip(shapes, kinds))]
    out = fn(k.ops, *inputs)
    if name == "cast-int":  # the node under test is the cast, below the multiply
        out = out._keras_history[0]._inbound_nodes[0].input_tensors[0]
    class_name, config, args, kwargs = recorded_op(out)
    return name, fn, shapes, kinds, class_name, config, args, kwargs


@pytest.mark.parametrize("case", range(len(OP_CASES)), ids=[c[0] for c in OP_CASES])
def test_op(case, record_property):
    name, fn, shapes, kinds, class_name, config, args, kwargs = _op_case_parts(case)
    op = sops.OPS[class_name](config, [], class_name)
    refs, options = op.split_call(args, kwargs)
    order = [int(r.layer[2:]) for r in refs]  # scratch input -> Keras input index
    xs = _op_inputs(shapes, kinds, case)

    k = keras()
    if name == "cast-int":
        fn = lambda o, a: o.cast(a, "float32")  # noqa: E731
    T = tf()
    dtypes = [_keras_dtype(kd, "float64") for kd in kinds]
    ts = [T.constant(x.astype(d)) for x, d in zip(xs, dtypes)]
    with T.GradientTape() as tape:
        for t in ts:
            tape.watch(t)
        y64 = fn(k.ops, *ts)
        differentiable = y64.dtype.is_floating and name != "cast-int"
        dy = rand(tuple(y64.shape), seed=case + 3)
        loss = T.reduce_sum(y64 * T.constant(dy)) if differentiable else None
    g64 = tape.gradient(loss, ts) if differentiable else None
    y64 = np.asarray(y64)
    y32 = np.asarray(fn(k.ops, *[T.constant(x.astype(_keras_dtype(kd, "float32")))
                                 for x, kd in zip(xs, kinds)]))

    sx = [xs[i].astype(np.float64) if kinds[i] in "ntpw" else xs[i].astype(
        {"b": bool, "i": np.int32}[kinds[i]]) for i in order]
    got = op.forward(sx, [None] * len(sx), **options)
    assert op.compute_mask(sx, [None] * len(sx), **options) is None
    if got.dtype == bool:
        np.testing.assert_array_equal(got, y64)
        np.testing.assert_array_equal(got, y32)
        return
    d64, d32 = check_forward(np.asarray(got, np.float64), y64, y32, name)
    got32 = op.forward([x.astype(np.float32) if x.dtype == np.float64 else x for x in sx],
                       [None] * len(sx), **options)
    assert np.allclose(got32, y32, atol=F32_TOL, rtol=F32_TOL), name
    dg = 0.0
    if differentiable:
        y_train = op.forward_train(sx, [None] * len(sx), None, **options)
        np.testing.assert_array_equal(y_train, got)
        dxs, grads = op.backward(dy)
        assert grads == [] and len(dxs) == len(sx)
        tgrads = [None if kinds[i] in "bi" else g64[i] for i in order]
        # the same tensor twice (x * x): Keras' gradient is the sum of both slots
        if len(set(order)) < len(order):
            dxs = [sum(d for d, j in zip(dxs, order) if j == i) for i in sorted(set(order))]
            tgrads = [g64[i] for i in sorted(set(order))]
        dxs = [np.zeros_like(np.asarray(t)) if d is None and t is None else d
               for d, t in zip(dxs, tgrads)]
        dxs = [d if d is not None else np.zeros(1) for d in dxs]
        dg = check_grads([np.asarray(d, np.float64) for d in dxs],
                         [None if t is None else np.asarray(t) for t in tgrads], name)
    record_property("max_abs_diff_float64", d64)
    record_property("max_abs_diff_float32", d32)
    record_property("max_grad_diff_float64", dg)


# ----------------------------------------------------------------------------- saved config fixture

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "ops_functional.json")


def build_ops_model(k):
    """A Functional model calling every supported op (tests/fixtures/ops_functional.json is
    its saved config.json, written by Keras 3.15.1)."""
    o = k.ops
    x, p, b = k.Input((6,), name="x"), k.Input((6,), name="p"), k.Input((6,), name="b")
    s, s4, q = k.Input((3, 5), name="s"), k.Input((3, 2, 5), name="s4"), k.Input((1, 5), name="q")
    n = k.Input((6,), dtype="int32", name="n")
    outs = [x + b, x * 0.5, 2.0 - x, x / p, x ** 2, -x, o.power(p, 2.5), o.power(p, b),
            o.divide(x, p), o.square(x), o.sqrt(p), o.abs(x), o.absolute(x), o.exp(x), o.log(p),
            o.log1p(p), o.expm1(x), o.maximum(x, 0.3), o.minimum(x, b), o.clip(x, -0.5, 1),
            o.where(x > 0, x, b), o.where(o.greater_equal(x, b), 1.0, x),
            o.where(o.less(x, b) | o.less_equal(x, 0.2), x, 0.0),
            o.where(o.logical_and(x > 0, ~(b > 0)) ^ o.logical_not(x < 1), x, b),
            o.cast(o.equal(x, b), "float32") + o.cast(o.not_equal(x, 0.5), "float32"),
            o.relu(x), o.relu6(x * 4), o.sigmoid(x), o.tanh(x), o.softmax(s, axis=1),
            o.log_softmax(s), o.gelu(x), o.gelu(x, approximate=False), o.silu(x), o.swish(x),
            o.hard_sigmoid(x), o.hard_silu(x), o.hard_swish(x), o.leaky_relu(x, 0.1),
            o.elu(x, 0.7), o.selu(x), o.celu(x, 0.8), o.softplus(x), o.softsign(x),
            o.log_sigmoid(x), o.reshape(s, (-1, 15)), o.transpose(s, (0, 2, 1)),
            o.expand_dims(x, 1), o.squeeze(q, 1), s[:, 1:3], s[..., None, 0], s[:, ::-1, 2],
            s4[:, 1, None, ..., 0:4:2], s[:, -1], x[:, :5] + o.arange(5, dtype="float32"),
            x + np.linspace(0, 1, 6).astype("float32"), o.concatenate([x, b], axis=-1),
            o.stack([x, b], axis=1), o.mean(s, axis=1, keepdims=True), o.sum(s, axis=(1, 2)),
            o.max(s, axis=-1), o.max(s, axis=(1, 2), keepdims=True, initial=0.5),
            o.min(s4, axis=(1, -1)), o.matmul(s, o.transpose(s, (0, 2, 1))),
            o.matmul(s, np.ones((5, 2), "float32")), o.cast(n, "float32") * x,
            o.hard_shrink(x, 0.3), o.soft_shrink(x, 0.2), o.hard_tanh(x), o.sparse_plus(x),
            o.squareplus(x, 2), o.tanh_shrink(x), o.threshold(x, 0.1, -0.5)]
    return k.Model([x, p, b, s, s4, q, n], outs)


def _fixture_inputs(seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"x": (4, 6), "p": (4, 6), "b": (4, 6), "s": (4, 3, 5), "s4": (4, 3, 2, 5), "q": (4, 1, 5)}
    xs = {name: np.round(rng.normal(0, 1, sh) * 2) / 2 + (0.25 if name == "b" else 0)
          for name, sh in shapes.items()}
    xs["p"] = np.abs(xs["p"]) + 0.3
    xs["n"] = rng.integers(-3, 4, (4, 6)).astype(np.int32)
    return xs


def _run_config(cfg, feed):
    """A minimal executor for the fixture (Inputs and ops only): TensorRef -> array."""
    values = {}
    for layer in cfg["config"]["layers"]:
        name = layer["name"]
        if layer["class_name"] == "InputLayer":
            values[(name, 0, 0)] = feed[name]
            continue
        assert layer["module"].startswith("keras.src.ops"), layer["module"]
        op = sops.OPS[layer["class_name"]](layer["config"], [], layer["class_name"])
        (node,) = layer["inbound_nodes"]
        refs, options = op.split_call(refs_from_config(node["args"]),
                                      refs_from_config(node["kwargs"]))
        xs = [values[r.key()] for r in refs]
        values[(name, 0, 0)] = op.forward(xs, [None] * len(xs), **options)
    return [values[tuple(t)] for t in cfg["config"]["output_layers"]]


def test_fixture_config_split_call():
    """Every op entry of a saved config.json: split_call finds exactly the recorded tensors
    (in call order) and the constants; every supported op class is in the fixture."""
    with open(FIXTURE) as f:
        cfg = json.load(f)
    seen = set()
    for layer in cfg["config"]["layers"]:
        if not layer["module"].startswith("keras.src.ops"):
            continue
        seen.add(layer["class_name"])
        op = sops.OPS[layer["class_name"]](layer["config"], [], layer["class_name"])
        (node,) = layer["inbound_nodes"]
        refs, options = op.split_call(refs_from_config(node["args"]), refs_from_config(node["kwargs"]))
        recorded = []

        def walk(obj):
            if isinstance(obj, dict) and obj.get("class_name") == "__keras_tensor__":
                recorded.append(tuple(obj["config"]["keras_history"]))
            elif isinstance(obj, dict):
                [walk(v) for v in obj.values()]
            elif isinstance(obj, list):
                [walk(v) for v in obj]
        walk(node["args"])
        walk(node["kwargs"])
        assert [r.key() for r in refs] == recorded, layer["name"]
        assert set(options) == {"call"}
    missing = {n for n in sops.OPS if n not in ("Arange", "Abs") and n not in seen}
    assert not missing, f"ops missing from the fixture: {sorted(missing)}"


def test_fixture_config_runs_like_keras():
    """The fixture rebuilt by Keras (from_config) and run by a minimal executor over the
    scratch ops agree (float32 Keras, 1e-5)."""
    k = keras()
    with open(FIXTURE) as f:
        cfg = json.load(f)
    names = [t[0] for t in cfg["config"]["input_layers"]]
    model = k.Model.from_config(json.loads(json.dumps(cfg["config"])))  # from_config pops keys
    feed = _fixture_inputs()
    ref = model.predict([feed[n].astype(np.float32) if n != "n" else feed[n] for n in names],
                        verbose=0)
    got = _run_config(cfg, {n: feed[n].astype(np.float64) if n != "n" else feed[n] for n in names})
    assert len(got) == len(ref)
    for i, (g, r) in enumerate(zip(got, ref)):
        assert np.allclose(g, r, atol=F32_TOL, rtol=F32_TOL), (
            i, cfg["config"]["output_layers"][i], np.abs(g - r).max())


# ----------------------------------------------------------------------------- end to end (load_model)

def _e2e_merge_ops_model(k):
    L, o = k.layers, k.ops
    a, b = k.Input((5,), name="a"), k.Input((4,), name="b")
    ha = L.Dense(8, activation="tanh")(a)
    hb = L.Dense(8)(b)
    shared = L.Dense(8, activation="sigmoid")
    sa, sb = shared(ha), shared(hb)
    h = L.Add()([ha, hb, sa])
    h = L.Concatenate()([L.Multiply()([h, sb]), L.Maximum()([ha, hb]), L.Minimum()([sa, sb]),
                         L.Subtract()([ha, hb]), L.Average()([ha, sb])])
    h = o.relu(h * 0.5 + 0.1) + o.mean(o.square(h[:, 3:11]), axis=1, keepdims=True) - o.sum(h[:, ::-3], axis=-1, keepdims=True) / 7
    d = L.Dot(axes=1, normalize=True)([ha, hb])
    seq = o.reshape(h, (-1, 5, 8))
    seq = o.softmax(seq, axis=1) * o.expand_dims(d, 1) + o.max(seq, axis=1, keepdims=True)
    h = L.Flatten()(o.transpose(seq, (0, 2, 1)))
    return k.Model([a, b], L.Dense(3, activation="softmax")(h))


def test_load_model_merges_and_ops(tmp_path, record_property):
    """A Functional model with every merge, a shared layer and operation nodes: scratch's
    predict vs Keras float32, loss and gradients vs the float64 twin and float32 Keras."""
    from backward_helpers import compare_gradients
    from keras_factories import randomize_weights, save_load
    k = keras()
    m = randomize_weights(_e2e_merge_ops_model(k), 1)
    sm, _ = save_load(m, tmp_path)
    rng = np.random.default_rng(0)
    x = [rng.normal(0, 1, (6, 5)).astype(np.float32), rng.normal(0, 1, (6, 4)).astype(np.float32)]
    ref = m.predict(x, verbose=0)
    got = sm.predict(x)
    assert np.allclose(got, ref, atol=F32_TOL, rtol=F32_TOL), np.abs(got - ref).max()
    y = rng.integers(0, 3, 6)
    d64, d32 = compare_gradients(m, sm, x, y)
    record_property("max_abs_diff_float32", float(np.abs(got - ref).max()))
    record_property("max_grad_diff_float64_twin", d64)


def test_load_model_masked_merges(tmp_path):
    """Masks through merges: Embedding(mask_zero) branches merged by Add/Multiply/Maximum/
    Concatenate reach a masked GlobalAveragePooling1D; an op (x * 1.0) drops the mask."""
    from keras_factories import randomize_weights, save_load
    k = keras()
    L = k.layers
    t1, t2 = k.Input((7,), dtype="int32"), k.Input((7,), dtype="int32")
    e1 = L.Embedding(9, 4, mask_zero=True)(t1)
    e2 = L.Embedding(9, 4, mask_zero=True)(t2)
    e3 = L.Dense(4)(e2)  # keeps e2's mask
    outs = [L.GlobalAveragePooling1D()(h) for h in (
        L.Add()([e1, e2]), L.Multiply()([e1, e3]), L.Maximum()([e1, e2, e3]),
        L.Minimum()([e1, e2 * 1.0]), L.Concatenate()([e1, e3]), L.Concatenate(axis=1)([e1, e2]),
        e1 * 1.0)]
    m = randomize_weights(k.Model([t1, t2], L.Concatenate()(outs)), 2)
    sm, _ = save_load(m, tmp_path)
    rng = np.random.default_rng(1)
    x = [rng.integers(0, 9, (5, 7)), rng.integers(0, 9, (5, 7))]
    x[0][:, 4:] = 0
    x[1][:2, 2:] = 0
    ref = m.predict(x, verbose=0)
    got = sm.predict(x)
    assert np.allclose(got, ref, atol=F32_TOL, rtol=F32_TOL), np.abs(got - ref).max(axis=0)


if __name__ == "__main__":  # regenerate the fixture: PYTHONPATH=. .venv/bin/python tests/test_scratch_merge_ops.py
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ops.keras")
        build_ops_model(keras()).save(path)
        cfg = json.loads(zipfile.ZipFile(path).read("config.json"))
    for key in ("build_config", "compile_config"):
        cfg.pop(key, None)
    with open(FIXTURE, "w") as f:
        json.dump(cfg, f, indent=1, sort_keys=True)
