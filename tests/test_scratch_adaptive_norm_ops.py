"""scratch_layers vs Keras for adaptive pooling (AdaptiveAverage/MaxPooling1D/2D/3D),
GroupNormalization, RMSNormalization, and the operation nodes hard_shrink, hard_tanh,
soft_shrink, sparse_plus, squareplus, tanh_shrink and threshold.

Layers: Input -> pointwise convolution (or Dense) -> LAYER -> Flatten -> Dense softmax with
random non-default weights, saved as .keras and legacy .h5:
* predict vs Keras float32 (atol 1e-5), both formats, and in scratch's float32 mode;
* LAYER's own output vs the float64 twin (1e-9 relative to the output's scale);
* loss and gradients vs tf.GradientTape on the twin (atol 1e-9, rtol 1e-7) and on float32.
The 3-D adaptive layers run TF's MaxPool3D/AvgPool3D, which have no float64 kernel: no
twin; their float64 forward is checked against a box reference written here and their
gradients against float32 Keras and central differences. The adaptive bins are also
checked against ``keras.ops.adaptive_*_pool`` itself for every L <= 24 and O <= L + 6.

Operation nodes: each one alone from its recorded call (forward vs Keras float64 and
float32, gradient vs tf.GradientTape), and all of them in one loaded Functional model
(predict, twin, gradients).
"""
import math
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import (F32_TOL, check_layer_forward, compare_gradients,  # noqa: E402
                              gradients_without_twin, max_abs, scale_diff, twin_of)
from keras_factories import check_model, keras, randomize_weights  # noqa: E402

import scratch_layers  # noqa: E402
from scratch_layers import ModelFileError  # noqa: E402
from scratch_layers.layers import operations as sops  # noqa: E402
from scratch_layers.layers.adaptive_pooling import AdaptiveAveragePooling1D, AdaptiveMaxPooling1D  # noqa: E402
from scratch_layers.layers.layer import TensorRef  # noqa: E402

pytestmark = pytest.mark.scratch

N = 3
TWIN_REL = 1e-9


def data(shape, seed=0, scale=1.0):
    return np.random.default_rng(seed).normal(0.2, scale, (N,) + shape).astype(np.float32)


def pointwise(k, shape):
    return {1: k.layers.Conv1D, 2: k.layers.Conv2D, 3: k.layers.Conv3D}[len(shape) - 1](shape[-1], 1)


# id -> (input shape without batch, layer factory); ids with "3d" have no float64 twin
CASES = {
    "aap1d-7to3": ((7, 2), lambda L: L.AdaptiveAveragePooling1D(3)),
    "aap1d-3to5": ((3, 2), lambda L: L.AdaptiveAveragePooling1D(5)),
    "amp1d-10to4": ((10, 2), lambda L: L.AdaptiveMaxPooling1D(4)),
    "amp1d-4to7": ((4, 2), lambda L: L.AdaptiveMaxPooling1D(7)),
    "aap2d-(7,5)to(3,4)": ((7, 5, 2), lambda L: L.AdaptiveAveragePooling2D((3, 4))),
    "aap2d-(5,7)to(7,3)": ((5, 7, 2), lambda L: L.AdaptiveAveragePooling2D((7, 3))),
    "amp2d-(7,5)to(3,4)": ((7, 5, 2), lambda L: L.AdaptiveMaxPooling2D((3, 4))),
    "amp2d-(6,6)to4": ((6, 6, 2), lambda L: L.AdaptiveMaxPooling2D(4)),
    "aap3d-(5,7,4)to(3,2,5)": ((5, 7, 4, 2), lambda L: L.AdaptiveAveragePooling3D((3, 2, 5))),
    "amp3d-(5,7,4)to(2,3,4)": ((5, 7, 4, 2), lambda L: L.AdaptiveMaxPooling3D((2, 3, 4))),
    "amp3d-(3,4,6)to(4,2,3)": ((3, 4, 6, 2), lambda L: L.AdaptiveMaxPooling3D((4, 2, 3))),
    "groupnorm-g2": ((3, 4, 3, 4), lambda L: L.GroupNormalization(2)),
    "groupnorm-instance": ((4, 5, 6), lambda L: L.GroupNormalization(-1)),
    "groupnorm-g1-eps": ((5, 6), lambda L: L.GroupNormalization(1, epsilon=0.3)),
    "groupnorm-axis1-g3": ((6, 5, 2), lambda L: L.GroupNormalization(3, axis=1)),
    "groupnorm-axis-2-g2-no-center": ((4, 6, 3), lambda L: L.GroupNormalization(2, axis=-2, center=False)),
    "groupnorm-g2-no-scale": ((5, 4, 4), lambda L: L.GroupNormalization(2, scale=False)),
    "rmsnorm": ((4, 6), lambda L: L.RMSNormalization()),
    "rmsnorm-axes-eps": ((3, 4, 5), lambda L: L.RMSNormalization(axis=[-2, -1], epsilon=0.5)),
    "rmsnorm-4d": ((3, 2, 4, 5), lambda L: L.RMSNormalization(epsilon=1e-3)),
}


def has_twin(case):
    return "3d" not in case


def build(case):
    k = keras()
    shape, factory = CASES[case]
    front = k.layers.Dense(shape[-1]) if case.startswith(("groupnorm", "rmsnorm")) else pointwise(k, shape)
    model = k.Sequential([k.Input(shape), front, factory(k.layers), k.layers.Flatten(),
                          k.layers.Dense(3, activation="softmax")])
    return model, data(shape)


# ----------------------------------------------------------------------------- references

def keras_bins(size, out):
    """Keras' adaptive windows along one axis, written from its TF backend's code
    (``_compute_static_gather_indices``), float32 arithmetic as TF's: [(start, length)]."""
    small = math.ceil(size / out)
    bins = []
    for i in range(out):
        start = int(np.floor(np.float32(i) * np.float32(size) / np.float32(out)))
        end = int(np.ceil(np.float32(i + 1) * np.float32(size) / np.float32(out)))
        start, end = min(start, size - 1), min(end, size)
        bins.append((start, small + 1 if end - start == small + 1 else small))
    return bins


def adaptive_box_reference(x, output_size, mode):
    """Max/mean over each output cell's box of Keras' bins (the product of the per-axis
    windows), one cell at a time."""
    bins = [keras_bins(size, out) for size, out in zip(x.shape[1:-1], output_size)]
    y = np.empty((x.shape[0],) + tuple(output_size) + (x.shape[-1],))
    for cell in np.ndindex(*output_size):
        box = tuple(slice(b[i][0], b[i][0] + b[i][1]) for b, i in zip(bins, cell))
        win = x[(slice(None),) + box].reshape(x.shape[0], -1, x.shape[-1])
        y[(slice(None),) + cell] = win.max(axis=1) if mode == "max" else win.mean(axis=1)
    return y


# ----------------------------------------------------------------------------- layer cases

@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients(case, tmp_path, record_property):
    model, x = build(case)
    sm, worst32 = check_model(model, x, tmp_path, fmt="keras", seed=1)
    sm_h5, d = check_model(model, x, tmp_path, fmt="h5", randomize=False)
    worst32 = max(worst32, d)
    h = np.asarray(model.layers[0](x))
    ref32 = np.asarray(model.layers[1](h))
    if has_twin(case):
        twin = twin_of(model)
        h64 = np.asarray(twin.layers[0](x.astype(np.float64)))
        ref64 = np.asarray(twin.layers[1](h64))
        tol = TWIN_REL
    else:
        h64 = h.astype(np.float64)
        cfg = model.layers[1].get_config()
        ref64 = adaptive_box_reference(h64, cfg["output_size"], "max" if case.startswith("amp") else "avg")
        tol = 1e-12
    d64, d32 = check_layer_forward((sm, sm_h5), 1, h, h64, ref64, ref32, tol)
    worst32 = max(worst32, d32)
    sm_h5.astype("float32")
    got32 = sm_h5.predict(x)
    assert got32.dtype == np.float32
    assert np.allclose(got32, np.asarray(model(x)), atol=1e-5, rtol=1e-5)
    y = np.random.default_rng(2).integers(0, 3, N)
    if has_twin(case):
        dpred, scale = scale_diff(sm.predict(x), twin.predict(x.astype(np.float64), verbose=0))
        assert dpred <= TWIN_REL * scale
        d64 = max(d64, dpred)
        g64, g32 = compare_gradients(model, sm, x, y)
    else:
        g64, g32 = gradients_without_twin(model, sm, sm_h5, x, y)
    print(f"{case}: forward vs twin/reference {d64:.3g}, vs float32 {worst32:.3g}; "
          f"grads vs twin/finite differences {g64:.3g}, vs float32 {g32:.3g}")
    record_property("max_abs_diff_float64_twin", d64)
    record_property("max_abs_diff_float32", worst32)
    record_property("max_grad_diff_float64_twin", g64)
    record_property("max_grad_diff_float32", g32)


def test_adaptive_bins_equal_keras_for_every_small_size():
    """For every input length L <= 24 and output length O <= L + 6: scratch's 1-D adaptive
    average and max pooling equal keras.ops.adaptive_{average,max}_pool in float64 (the
    bins, overlaps and the L < O case), and the bins equal the reference written from
    Keras' code."""
    import tensorflow as tf
    from keras import ops
    from scratch_layers.layers.adaptive_pooling import adaptive_windows
    rng = np.random.default_rng(4)
    checked = 0
    for size in range(1, 25):
        x = rng.normal(0, 1, (2, size, 3))
        for out in range(1, size + 7):
            starts, lengths = adaptive_windows(size, out)
            assert list(zip(starts.tolist(), lengths.tolist())) == keras_bins(size, out)
            try:
                ref_avg = np.asarray(ops.adaptive_average_pool(tf.constant(x), out, "channels_last"))
                ref_max = np.asarray(ops.adaptive_max_pool(tf.constant(x), out, "channels_last"))
            except Exception:  # noqa: BLE001 - Keras cannot pool this length; nothing to compare
                continue
            cfg = {"name": "p", "output_size": [out]}
            np.testing.assert_allclose(AdaptiveAveragePooling1D(cfg, []).forward(x), ref_avg,
                                       rtol=1e-14, atol=1e-15)
            np.testing.assert_array_equal(AdaptiveMaxPooling1D(cfg, []).forward(x), ref_max)
            checked += 1
    assert checked > 400, checked


def test_adaptive_max_gradient_goes_to_the_first_maximum():
    """Ties inside a window (1-D/2-D: TF's MaxPoolGrad picks the first maximal cell):
    scratch's input gradient equals tf.GradientTape's, float64."""
    import tensorflow as tf
    from keras import ops
    from scratch_layers.layers.adaptive_pooling import AdaptiveMaxPooling2D
    x = np.round(np.random.default_rng(6).normal(0, 1, (2, 7, 5, 3)))  # many ties
    dy = np.random.default_rng(7).normal(0, 1, (2, 3, 4, 3))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        yt = ops.adaptive_max_pool(xt, (3, 4), "channels_last")
    ref = tape.gradient(yt, xt, output_gradients=tf.constant(dy)).numpy()
    layer = AdaptiveMaxPooling2D({"name": "p", "output_size": [3, 4]}, [])
    np.testing.assert_array_equal(layer.forward_train(x, None, None), yt.numpy())
    dx, _ = layer.backward(dy)
    np.testing.assert_allclose(dx, ref, rtol=1e-14, atol=1e-15)


def test_hostile_adaptive_output_size_refused(tmp_path):
    """output_size 10**4 per axis (10**12 cells): ModelFileError when the layer is built."""
    from scratch_layers.layers.adaptive_pooling import AdaptiveAveragePooling3D
    with pytest.raises(ModelFileError, match="MAX_SAMPLE_ELEMENTS"):
        AdaptiveAveragePooling3D({"name": "p", "output_size": [10 ** 4] * 3}, [])


def test_group_normalization_refuses_groups_that_do_not_divide():
    from scratch_layers.errors import InputError
    from scratch_layers.layers.normalization import GroupNormalization
    layer = GroupNormalization({"name": "g", "groups": 4}, [np.ones(6), np.zeros(6)])
    with pytest.raises(InputError, match="do not split into 4 groups"):
        layer.forward(np.zeros((2, 6)))


# ----------------------------------------------------------------------------- operation nodes

def _recorded(out):
    """(class name, config, args, kwargs) of the op that made KerasTensor ``out``, as the
    loader hands them over (tensors as TensorRef)."""
    import json
    from keras.src.models.functional import serialize_node

    def refs(obj):
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                return TensorRef(*obj["config"]["keras_history"])
            return {k: refs(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [refs(v) for v in obj]
        return obj
    op, node_index, _ = out._keras_history
    node = json.loads(json.dumps(serialize_node(op._inbound_nodes[node_index])))
    return type(op).__name__, json.loads(json.dumps(op.get_config())), refs(node["args"]), refs(node["kwargs"])


OP_CASES = {
    "hard_shrink": lambda o, a: o.hard_shrink(a),
    "hard_shrink-0.9": lambda o, a: o.hard_shrink(a, 0.9),
    "soft_shrink": lambda o, a: o.soft_shrink(a),
    "soft_shrink-1.3": lambda o, a: o.soft_shrink(a, threshold=1.3),
    "hard_tanh": lambda o, a: o.hard_tanh(a),
    "sparse_plus": lambda o, a: o.sparse_plus(a),
    "squareplus": lambda o, a: o.squareplus(a),
    "squareplus-b0.7": lambda o, a: o.squareplus(a, 0.7),
    "tanh_shrink": lambda o, a: o.tanh_shrink(a),
    "threshold": lambda o, a: o.threshold(a, 0.4, -2.5),
}


@pytest.mark.parametrize("case", OP_CASES)
def test_op(case, record_property):
    """The op node built from its recorded call: forward vs Keras float64 (1e-9 relative)
    and float32, in both of scratch's dtypes; gradient vs tf.GradientTape in float64."""
    import tensorflow as tf
    k = keras()
    fn = OP_CASES[case]
    class_name, config, args, kwargs = _recorded(fn(k.ops, k.Input((6,))))
    op = sops.OPS[class_name](config, [], class_name)
    refs, options = op.split_call(args, kwargs)
    assert len(refs) == 1
    x = np.random.default_rng(len(case)).normal(0.1, 1.6, (5, 6))
    for edge in (0.4, 0.5, 0.9, 1.0, 1.3):  # one-sided derivatives at the breakpoints are conventions
        x[np.abs(np.abs(x) - edge) < 1e-3] += 0.01
    dy = np.random.default_rng(1).normal(0, 1, x.shape)
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y64 = fn(k.ops, xt)
    g64 = tape.gradient(y64, xt, output_gradients=tf.constant(dy)).numpy()
    y32 = np.asarray(fn(k.ops, tf.constant(x.astype(np.float32))))
    got = op.forward([x], [None], **options)
    d64, scale = scale_diff(got, y64)
    assert d64 <= TWIN_REL * scale, d64
    d32 = max_abs(got, y32)
    assert np.allclose(got, y32, atol=F32_TOL, rtol=F32_TOL), d32
    got32 = op.forward([x.astype(np.float32)], [None], **options)
    assert got32.dtype == np.float32 and np.allclose(got32, y32, atol=F32_TOL, rtol=F32_TOL)
    np.testing.assert_array_equal(op.forward_train([x], [None], None, **options), got)
    (dx,), grads = op.backward(dy)
    assert grads == []
    np.testing.assert_allclose(dx, g64, atol=1e-9, rtol=1e-7)
    print(f"op {case}: forward vs float64 Keras {d64:.3g}, vs float32 {d32:.3g}; "
          f"grad vs float64 {max_abs(dx, g64):.3g}")
    record_property("max_abs_diff_float64", d64)
    record_property("max_abs_diff_float32", d32)
    record_property("max_grad_diff_float64", max_abs(dx, g64))


def test_op_threshold_requires_numbers():
    with pytest.raises(ModelFileError, match="default_value"):
        sops.OPS["Threshold"]({"name": "t", "threshold": 0.1}, [], "Threshold")
    with pytest.raises(ModelFileError, match="threshold"):
        sops.OPS["SoftShrink"]({"name": "s", "threshold": "0.5"}, [], "SoftShrink")


def test_ops_in_a_loaded_model(tmp_path, record_property):
    """All seven ops as nodes of one Functional model: predict vs Keras float32 and the
    float64 twin, gradients vs the twin and float32 (compare_gradients)."""
    k = keras()
    o = k.ops
    inp = k.Input((5,))
    h = k.layers.Dense(8)(inp)
    parts = [o.hard_shrink(h, 0.3), o.soft_shrink(h, 0.2), o.hard_tanh(h), o.sparse_plus(h),
             o.squareplus(h, 2), o.tanh_shrink(h), o.threshold(h, 0.1, -0.5)]
    out = k.layers.Dense(3, activation="softmax")(k.layers.Concatenate()(parts))
    m = randomize_weights(k.Model(inp, out), 2)
    x = data((5,), seed=3, scale=2.0)
    path = str(tmp_path / "ops.keras")
    m.save(path)
    sm = scratch_layers.load_model(path)
    assert {"HardShrink", "SoftShrink", "HardTanh", "SparsePlus", "Squareplus", "TanhShrink",
            "Threshold"} <= {layer.class_name for layer in sm.layers}
    got = sm.predict(x)
    d32 = max_abs(got, m.predict(x, verbose=0))
    assert d32 <= F32_TOL
    d64, scale = scale_diff(got, twin_of(m).predict(x.astype(np.float64), verbose=0))
    assert d64 <= TWIN_REL * scale
    g64, g32 = compare_gradients(m, sm, x, np.random.default_rng(4).integers(0, 3, N))
    print(f"ops model: forward vs twin {d64:.3g}, vs float32 {d32:.3g}; grads vs twin {g64:.3g}, "
          f"vs float32 {g32:.3g}")
    record_property("max_abs_diff_float64_twin", d64)
    record_property("max_grad_diff_float64_twin", g64)
