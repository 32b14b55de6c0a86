"""Merge layers (scratch_layers/merge.py) and operation nodes (scratch_layers/ops.py)
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

from scratch_layers import merge  # noqa: E402
from scratch_layers.base import TensorRef  # noqa: E402

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
    sl = merge.LAYERS[name](config, [], name)
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
