"""scratch_layers.attention against Keras: MultiHeadAttention, Attention, AdditiveAttention,
EinsumDense (layer objects called directly, weights in the .keras loader's order) and
TimeDistributed (end to end through load_model). Forward vs the float64 twin (1e-9
relative to the output scale) and vs float32 Keras (atol 1e-5); backward (every input and
weight) vs tf.GradientTape of sum(y * dy) in float64 (atol 1e-9, rtol 1e-7)."""
import io
import os
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import h5py
import numpy as np
import pytest

from backward_helpers import compare_gradients
from keras_factories import check_model, keras, randomize_weights

from scratch_layers.saving import safety
from scratch_layers.layers.attention import AdditiveAttention, Attention, MultiHeadAttention
from scratch_layers.layers.einsum_dense import EinsumDense
from scratch_layers.layers.layer import TensorRef
from scratch_layers.errors import NoBackwardError, UnsupportedLayerError
from scratch_layers.saving.loading import _collect_vars
from scratch_layers.training.backward import TrainContext

TWIN_REL = 1e-9
F32_ATOL, F32_RTOL = 1e-5, 1e-5
G_ATOL, G_RTOL = 1e-9, 1e-7


# ----------------------------------------------------------------------------- helpers

def loader_datasets(model, tmp_path, group):
    """(names relative to the layer group, float64 values) of the layer's weights in the
    order scratch_layers' .keras loader hands them over, and the check against the
    layer's weight_shapes."""
    path = os.path.join(str(tmp_path), "m.keras")
    model.save(path)
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        ds = _collect_vars(f[f"layers/{group}"], "test")
        names = [d.name[len(f"/layers/{group}/"):] for d in ds]
        values = [np.asarray(d[()], np.float64) for d in ds]
        return names, values, ds, f


def check_shapes(model, tmp_path, group, cls, config):
    path = os.path.join(str(tmp_path), "m.keras")
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        safety.check_weights("test", _collect_vars(f[f"layers/{group}"], "test"),
                             cls.weight_shapes(config))


def twin_layer(layer, cls):
    """The same layer in float64 with the same weights (Keras order)."""
    cfg = dict(layer.get_config())
    cfg["dtype"] = "float64"
    return cls.from_config(cfg)


def tf_tensor(x, mask=None):
    import tensorflow as tf
    from keras.src import backend
    t = tf.constant(x)
    if mask is not None:
        backend.set_keras_mask(t, tf.constant(mask))
    return t


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


def assert_grads(name, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (name, got.shape, want.shape)
    d = float(np.abs(got - want).max()) if got.size else 0.0
    assert np.allclose(got, want, atol=G_ATOL, rtol=G_RTOL), f"{name}: max|diff| {d:.3g}"
    return d


def lengths_mask(lengths, t):
    return np.arange(t)[None, :] < np.asarray(lengths)[:, None]


# ----------------------------------------------------------------------------- MHA

MHA_CASES = {
    # name: (layer kwargs, T, S, dq, dv, dk (None: no key), masks, attention_mask, causal)
    "self_plain": (dict(num_heads=2, key_dim=3), 4, 4, 5, 5, None, (None, None, None), False, False),
    "self_causal_only": (dict(num_heads=2, key_dim=3), 5, 5, 4, 4, None, (None, None, None), False, True),
    "cross_masks_causal": (dict(num_heads=3, key_dim=2, value_dim=4, output_shape=(2, 3)),
                           4, 6, 5, 3, 7, ([4, 2, 3], [6, 3, 1], [5, 6, 2]), True, True),
    "value_mask_all_padding": (dict(num_heads=2, key_dim=3), 3, 5, 4, 6, None,
                               ([3, 1], [0, 3], None), False, False),
    "dropout_path_masks": (dict(num_heads=2, key_dim=3, dropout=0.3), 4, 5, 4, 6, 3,
                           ([4, 2], [0, 3], [5, 4]), True, True),
    "no_bias_gate_window": (dict(num_heads=2, key_dim=2, use_bias=False, use_gate=True,
                                 sliding_window=2, output_shape=3), 5, 5, 4, 4, None,
                            ([5, 3], [4, 5], None), False, False),
    "gate_bias_attention_mask": (dict(num_heads=1, key_dim=4, use_gate=True), 3, 4, 2, 3, 3,
                                 (None, None, None), True, False),
    "attention_mask_2d_query_mask": (dict(num_heads=2, key_dim=2), 4, 3, 3, 2, None,
                                     ([2, 4], None, None), "2d", False),
}


def _mha_data(case, rng):
    kw, t, s, dq, dv, dk, lens, use_am, causal = MHA_CASES[case]
    b = max(len(x) for x in lens if x is not None) if any(x is not None for x in lens) else 2
    q = rng.normal(size=(b, t, dq))
    v = rng.normal(size=(b, s, dv))
    k = rng.normal(size=(b, s, dk)) if dk else None
    masks = [None if lens[0] is None else lengths_mask(lens[0], t),
             None if lens[1] is None else lengths_mask(lens[1], s),
             None if (k is None or lens[2] is None) else lengths_mask(lens[2], s)]
    am = (rng.random((t, s) if use_am == "2d" else (b, t, s)) > 0.3) if use_am else None
    return kw, q, v, k, masks, am, causal


@pytest.mark.parametrize("case", sorted(MHA_CASES))
def test_multi_head_attention_forward_and_backward(case, tmp_path):
    import tensorflow as tf
    k_ = keras()
    rng = np.random.default_rng(sorted(MHA_CASES).index(case))
    kw, q, v, k, masks, am, causal = _mha_data(case, rng)

    # a tiny model holding the float32 layer: gives the .keras loader's weight order
    qi, vi = k_.Input(q.shape[1:]), k_.Input(v.shape[1:])
    ki = k_.Input(k.shape[1:]) if k is not None else None
    layer = k_.layers.MultiHeadAttention(**kw)
    out = layer(qi, vi, key=ki) if ki is not None else layer(qi, vi)
    model = k_.Model([qi, vi] + ([ki] if ki is not None else []), out)
    randomize_weights(model, seed=3)
    names, weights, _, _ = loader_datasets(model, tmp_path, "multi_head_attention")
    groups = sorted(["query_dense", "key_dense", "value_dense", "output_dense"]
                    + (["_gate_dense"] if kw.get("use_gate") else []))
    per = 1 if kw.get("use_bias") is False else 2
    assert names == [f"{g}/vars/{i}" for g in groups for i in range(per)]
    check_shapes(model, tmp_path, "multi_head_attention", MultiHeadAttention, layer.get_config())

    sl = MultiHeadAttention(layer.get_config(), weights, "MultiHeadAttention")
    keras_w = [np.asarray(w, np.float64) for w in layer.get_weights()]
    for i, w in zip(sl.keras_order, keras_w):   # keras_order maps to layer.weights
        np.testing.assert_array_equal(sl.weights[i], w)

    twin = twin_layer(layer, k_.layers.MultiHeadAttention)
    twin(tf_tensor(q), tf_tensor(v), key=None if k is None else tf_tensor(k))
    twin.set_weights(keras_w)

    def keras_call(lay, dtype, watch=None):
        qt = tf_tensor(q.astype(dtype), masks[0])
        vt = tf_tensor(v.astype(dtype), masks[1])
        kt = None if k is None else tf_tensor(k.astype(dtype), masks[2])
        if watch is not None:
            for t in (qt, vt, kt):
                if t is not None:
                    watch.watch(t)
        y = lay(qt, vt, key=kt, attention_mask=None if am is None else tf.constant(am),
                use_causal_mask=causal)
        return y, (qt, vt, kt)

    xs = [q, v, k, am]
    y = sl.forward(xs, masks + [None], use_causal_mask=causal)
    y64, _ = keras_call(twin, np.float64)
    y32, _ = keras_call(layer, np.float32)
    assert y.shape == tuple(y64.shape)
    d64 = rel_diff(y, y64)
    assert d64 <= TWIN_REL, f"vs float64 twin {d64:.3g}"
    np.testing.assert_allclose(y, np.asarray(y32, np.float64), atol=F32_ATOL, rtol=F32_RTOL)
    assert (sl.compute_mask(xs, masks + [None]) is masks[0])

    # float32 scratch (weights cast) against float32 Keras
    sl32 = MultiHeadAttention(layer.get_config(), [w.astype(np.float32) for w in weights],
                              "MultiHeadAttention")
    y_32 = sl32.forward([x if x is None or x.dtype == bool else x.astype(np.float32) for x in xs],
                        masks + [None], use_causal_mask=causal)
    assert y_32.dtype == np.float32
    np.testing.assert_allclose(y_32, np.asarray(y32), atol=F32_ATOL, rtol=F32_RTOL)

    # backward: d sum(y * dy) against tf.GradientTape on the twin
    dy = rng.normal(size=y.shape)
    y_train = sl.forward_train(xs, masks + [None], TrainContext(training=False),
                               use_causal_mask=causal)
    np.testing.assert_array_equal(y_train, y)
    dxs, grads = sl.backward(dy)
    with tf.GradientTape() as tape:
        yt, (qt, vt, kt) = keras_call(twin, np.float64, watch=tape)
        loss = tf.reduce_sum(yt * tf.constant(dy))
    inputs = [t for t in (qt, vt, kt) if t is not None]
    tg = tape.gradient(loss, inputs + list(twin.trainable_weights))
    worst = 0.0
    for name, got, want in zip(["dquery", "dvalue", "dkey"], dxs, tg[:len(inputs)]):
        worst = max(worst, assert_grads(name, got, want))
    assert len(dxs) == 4 and dxs[3] is None and (k is not None or dxs[2] is None)
    for i, w, want in zip(sl.keras_order, twin.trainable_weights, tg[len(inputs):]):
        worst = max(worst, assert_grads(w.path, grads[i], want))
    print(f"{case}: forward vs twin {d64:.3g} (relative), backward worst {worst:.3g}")
    if kw.get("dropout"):
        with pytest.raises(NoBackwardError, match="dropout"):
            sl.forward_train(xs, masks + [None], TrainContext(training=True))


def _refs(obj):
    """A recorded Functional call with TensorRef in place of __keras_tensor__."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            return TensorRef(*obj["config"]["keras_history"])
        return {k: _refs(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_refs(v) for v in obj]
    return obj


def _node(model, name):
    entry = next(e for e in model.get_config()["layers"] if e["name"] == name)
    node = entry["inbound_nodes"][0]
    return _refs(node["args"]), _refs(node["kwargs"])


def test_split_call_maps_recorded_calls_to_inputs():
    k_ = keras()
    a, b = k_.Input((4, 3)), k_.Input((5, 3))
    m1 = k_.layers.MultiHeadAttention(2, 2, name="m1")
    m2 = k_.layers.MultiHeadAttention(2, 2, name="m2")
    m3 = k_.layers.MultiHeadAttention(2, 2, name="m3")
    h = m1(a, b)
    h = m2(h, b, key=b, attention_mask=k_.ops.ones((1, 4, 5)), use_causal_mask=True)
    h = m3(query=h, value=h)
    att = k_.layers.Attention(name="att")
    h2 = att([h, b, b], use_causal_mask=True)
    model = k_.Model([a, b], [h, h2])
    cfg = m1.get_config()
    s1 = MultiHeadAttention(cfg, [np.asarray(w, np.float64) for w in m1.get_weights()],
                            "MultiHeadAttention")
    ins, opts = s1.split_call(*_node(model, "m1"))
    assert [r.layer if r else None for r in ins] == [a._keras_history[0].name,
                                                     b._keras_history[0].name, None, None]
    assert opts == {"use_causal_mask": False}
    ins, opts = s1.split_call(*_node(model, "m2"))
    assert ins[0].layer == "m1" and ins[2].layer == ins[1].layer and ins[3] is None
    assert opts["use_causal_mask"] is True and opts["constant_attention_mask"].shape == (1, 4, 5)
    ins, opts = s1.split_call(*_node(model, "m3"))
    assert [r.layer for r in ins[:2]] == ["m2", "m2"] and ins[2] is None
    with pytest.raises(UnsupportedLayerError):
        s1.split_call([TensorRef("x"), TensorRef("y")], {"return_attention_scores": True})
    sa = Attention(att.get_config(), [], "Attention")
    ins, opts = sa.split_call(*_node(model, "att"))
    assert len(ins) == 3 and opts == {"use_causal_mask": True}
    with pytest.raises(UnsupportedLayerError):
        sa.split_call([[TensorRef("x"), TensorRef("y")]], {"return_attention_scores": True})


def test_multi_head_attention_refuses_what_it_does_not_support():
    k_ = keras()
    layer = k_.layers.MultiHeadAttention(2, 2, attention_axes=(1, 2))
    layer(np.zeros((1, 2, 3, 4), np.float32), np.zeros((1, 2, 3, 4), np.float32))
    with pytest.raises(UnsupportedLayerError, match="attention_axes"):
        MultiHeadAttention(layer.get_config(), [np.asarray(w, np.float64) for w in layer.get_weights()],
                           "MultiHeadAttention")


# ----------------------------------------------------------------------------- Attention

ATT_CASES = {
    "dot": (Attention, dict(), False, False, False),
    "dot_scale_masks_causal_key": (Attention, dict(use_scale=True), True, True, True),
    "concat_scale_masks": (Attention, dict(use_scale=True, score_mode="concat"), True, False, True),
    "concat_causal": (Attention, dict(score_mode="concat", dropout=0.2), False, True, False),
    "additive_masks_key": (AdditiveAttention, dict(), True, False, True),
    "additive_no_scale_causal": (AdditiveAttention, dict(use_scale=False), True, True, False),
}


@pytest.mark.parametrize("case", sorted(ATT_CASES))
def test_attention_forward_and_backward(case, tmp_path):
    import tensorflow as tf
    k_ = keras()
    cls, kw, use_masks, causal, with_key = ATT_CASES[case]
    kcls = getattr(k_.layers, cls.__name__)
    rng = np.random.default_rng(10 + sorted(ATT_CASES).index(case))
    b, tq, tv, d = 3, 4, 5, 3
    q, v = rng.normal(size=(b, tq, d)), rng.normal(size=(b, tv, d))
    k = rng.normal(size=(b, tv, d)) if with_key else None
    masks = [lengths_mask([4, 2, 3], tq), lengths_mask([5, 1, 3], tv)] if use_masks else [None, None]
    if with_key:
        masks.append(lengths_mask([2, 5, 4], tv) if use_masks else None)  # Keras ignores it

    qi, vi = k_.Input((tq, d)), k_.Input((tv, d))
    ki = k_.Input((tv, d)) if with_key else None
    layer = kcls(**kw)
    model = k_.Model([qi, vi] + ([ki] if with_key else []),
                     layer([qi, vi] + ([ki] if with_key else [])))
    for w in layer.weights:
        w.assign(rng.uniform(0.5, 1.5, tuple(w.shape)).astype(np.float32))
    group = "additive_attention" if cls is AdditiveAttention else "attention"
    names, weights, _, _ = loader_datasets(model, tmp_path, group)
    assert names == [f"vars/{i}" for i in range(len(layer.weights))]
    check_shapes(model, tmp_path, group, cls, layer.get_config())
    sl = cls(layer.get_config(), weights, cls.__name__)

    twin = twin_layer(layer, kcls)
    twin([tf_tensor(x) for x in (q, v, k) if x is not None])
    twin.set_weights([np.asarray(w, np.float64) for w in layer.get_weights()])

    def keras_call(lay, dtype, watch=None):
        ts = [tf_tensor(x.astype(dtype), m) for x, m in zip((q, v, k), masks) if x is not None]
        if watch is not None:
            for t in ts:
                watch.watch(t)
        return lay(ts, use_causal_mask=causal), ts

    xs = [x for x in (q, v, k) if x is not None]
    y = sl.forward(xs, masks, use_causal_mask=causal)
    y64, _ = keras_call(twin, np.float64)
    y32, _ = keras_call(layer, np.float32)
    d64 = rel_diff(y, y64)
    assert d64 <= TWIN_REL, f"vs float64 twin {d64:.3g}"
    np.testing.assert_allclose(y, np.asarray(y32, np.float64), atol=F32_ATOL, rtol=F32_RTOL)
    assert sl.compute_mask(xs, masks) is masks[0]

    dy = rng.normal(size=y.shape)
    sl.forward_train(xs, masks, TrainContext(training=False), use_causal_mask=causal)
    dxs, grads = sl.backward(dy)
    with tf.GradientTape() as tape:
        yt, ts = keras_call(twin, np.float64, watch=tape)
        loss = tf.reduce_sum(yt * tf.constant(dy))
    tg = tape.gradient(loss, ts + list(twin.trainable_weights))
    worst = 0.0
    assert len(dxs) == len(xs)
    for i, (got, want) in enumerate(zip(dxs, tg[:len(ts)])):
        worst = max(worst, assert_grads(f"dx{i}", got, want))
    assert len(grads) == len(twin.trainable_weights)
    for w, got, want in zip(twin.trainable_weights, grads, tg[len(ts):]):
        worst = max(worst, assert_grads(w.path, got, want))
    print(f"{case}: forward vs twin {d64:.3g}, backward worst {worst:.3g}")


# ----------------------------------------------------------------------------- EinsumDense

EINSUM_CASES = [
    ("ab,bc->ac", (4,), "c", "relu", (3, 5)),
    ("abc,cd->abd", (2, 3), "d", None, (3, 2, 4)),
    ("abc,cde->abde", (2, 3, 2), "de", "tanh", (3, 2, 4)),
    ("...b,bc->...c", (3,), "c", None, (2, 3, 4)),
    ("abc,bcd->ad", (2,), None, "sigmoid", (3, 4, 5)),
    ("ab...,bc->ac...", (3, 2), "c", None, (2, 4, 2)),
]


@pytest.mark.parametrize("equation,out_shape,bias_axes,activation,x_shape", EINSUM_CASES)
def test_einsum_dense(equation, out_shape, bias_axes, activation, x_shape, tmp_path):
    import tensorflow as tf
    k_ = keras()
    rng = np.random.default_rng(len(equation))
    x = rng.normal(size=x_shape)
    xi = k_.Input(x_shape[1:])
    layer = k_.layers.EinsumDense(equation, output_shape=out_shape, bias_axes=bias_axes,
                                  activation=activation)
    model = k_.Model(xi, layer(xi))
    randomize_weights(model, seed=5)
    names, weights, _, _ = loader_datasets(model, tmp_path, "einsum_dense")
    if "..." in equation and equation.endswith("...") and bias_axes:
        pass  # bias shape unknown from config alone (trailing 1s): weight_shapes gives None
    check_shapes(model, tmp_path, "einsum_dense", EinsumDense, layer.get_config())
    sl = EinsumDense(layer.get_config(), weights, "EinsumDense")
    twin = twin_layer(layer, k_.layers.EinsumDense)
    twin(tf_tensor(x))
    twin.set_weights([np.asarray(w, np.float64) for w in layer.get_weights()])
    y = sl.forward(x)
    assert rel_diff(y, twin(tf_tensor(x))) <= TWIN_REL
    np.testing.assert_allclose(y, np.asarray(layer(x.astype(np.float32)), np.float64),
                               atol=F32_ATOL, rtol=F32_RTOL)
    dy = rng.normal(size=y.shape)
    sl.forward_train(x, None, TrainContext())
    dx, grads = sl.backward(dy)
    xt = tf_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(twin(xt) * tf.constant(dy))
    tg = tape.gradient(loss, [xt] + list(twin.trainable_weights))
    assert_grads("dx", dx, tg[0])
    for w, got, want in zip(twin.trainable_weights, grads, tg[1:]):
        assert_grads(w.path, got, want)


# ----------------------------------------------------------------------------- TimeDistributed

@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_time_distributed_dense_end_to_end(fmt, tmp_path):
    k_ = keras()
    model = k_.Sequential([
        k_.Input((4, 5)),
        k_.layers.TimeDistributed(k_.layers.Dense(3, activation="tanh")),
        k_.layers.GlobalAveragePooling1D(),
        k_.layers.Dense(3, activation="softmax"),
    ])
    x = np.random.default_rng(0).normal(size=(6, 4, 5)).astype(np.float32)
    sm, worst = check_model(model, x, tmp_path, fmt=fmt, seed=1)
    assert type(sm.layers[0]).__name__ == "TimeDistributed"
    compare_gradients(model, sm, x, np.array([0, 1, 2, 0, 1, 2]))


def test_time_distributed_refuses_training_an_inner_regularizer(tmp_path):
    k_ = keras()
    model = k_.Sequential([
        k_.Input((4, 5)),
        k_.layers.TimeDistributed(k_.layers.Dense(3, kernel_regularizer="l2")),
        k_.layers.Flatten(),
        k_.layers.Dense(2, activation="softmax"),
    ])
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype(np.float32)
    sm, _ = check_model(model, x, tmp_path, seed=1)
    with pytest.raises(NoBackwardError, match="kernel_regularizer"):
        sm.loss_and_gradients(x, np.array([0, 1]))


def test_time_distributed_conv2d_end_to_end(tmp_path):
    k_ = keras()
    model = k_.Sequential([
        k_.Input((3, 6, 6, 2)),
        k_.layers.TimeDistributed(k_.layers.Conv2D(3, 3, strides=2, padding="same",
                                                   activation="relu")),
        k_.layers.Flatten(),
        k_.layers.Dense(4, activation="softmax"),
    ])
    x = np.random.default_rng(1).normal(size=(5, 3, 6, 6, 2)).astype(np.float32)
    sm, worst = check_model(model, x, tmp_path, seed=2)
    compare_gradients(model, sm, x, np.array([0, 1, 2, 3, 0]))


def test_time_distributed_mask_passes_through(tmp_path):
    """Embedding(mask_zero) -> TimeDistributed(Dense) -> GlobalAveragePooling1D: the mask
    reaches the pooling through the wrapper, as in Keras."""
    k_ = keras()
    model = k_.Sequential([
        k_.Input((5,), dtype="int32"),
        k_.layers.Embedding(7, 4, mask_zero=True),
        k_.layers.TimeDistributed(k_.layers.Dense(3)),
        k_.layers.GlobalAveragePooling1D(),
        k_.layers.Dense(2, activation="softmax"),
    ])
    x = np.array([[1, 2, 0, 0, 0], [3, 4, 5, 6, 1], [2, 0, 0, 0, 0]], np.int32)
    sm, _ = check_model(model, x, tmp_path, seed=3)
    compare_gradients(model, sm, x, np.array([0, 1, 1]))
