"""Shared helpers of the backward/training tests: Keras' own gradients (tf.GradientTape)
on the float64 twin and on the float32 model, compared with scratch_layers'."""
import contextlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

TWIN_ATOL = 1e-9     # gradients vs Keras' float64 twin
TWIN_RTOL = 1e-7
F32_TOL = 1e-5       # gradients vs Keras float32 (atol and rtol)


@contextlib.contextmanager
def floatx64():
    """Keras' floatx float64 (the loss object and optimizer then compute in float64 too)."""
    import keras
    old = keras.config.floatx()
    keras.config.set_floatx("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(old)


def twin_of(keras_model):
    """The float64 twin (scratch_layers.verify.float64_twin) built under floatx float64."""
    from scratch_layers.verify.keras import float64_twin
    with floatx64():
        return float64_twin(keras_model)


def keras_loss_and_grads(keras_model, x, y, training=False, float64=False):
    """Keras' SparseCategoricalCrossentropy() and its gradients w.r.t. trainable_weights."""
    import keras
    import tensorflow as tf

    ctx = floatx64() if float64 else contextlib.nullcontext()
    with ctx:
        loss_fn = keras.losses.SparseCategoricalCrossentropy()
        with tf.GradientTape() as tape:
            probs = keras_model(x, training=training)
            loss = loss_fn(y, probs)
        grads = tape.gradient(loss, keras_model.trainable_weights)
    return float(loss), [np.asarray(tf.convert_to_tensor(g)) for g in grads]


def max_abs(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max()) if a.size else 0.0


def per_layer_diffs(keras_model, grads_a, grads_b):
    """{layer name: max |a - b| over its trainable weights} (Keras' variable paths)."""
    out = {}
    for v, a, b in zip(keras_model.trainable_weights, grads_a, grads_b):
        name = v.path.split("/")[0]
        out[name] = max(out.get(name, 0.0), max_abs(a, b))
    return out


def compare_gradients(keras_model, scratch_model, x, y, training=False, seed=None):
    """Scratch loss/grads vs the float64 twin (TWIN tolerances) and the float32 model
    (F32_TOL). Returns (worst vs twin, worst vs float32)."""
    loss, grads = scratch_model.loss_and_gradients(x, y, training=training, seed=seed)
    assert len(grads) == len(keras_model.trainable_weights)
    for g, v in zip(grads, keras_model.trainable_weights):
        assert g.shape == tuple(v.shape), (v.path, g.shape, v.shape)
    x64 = x.astype(np.float64) if getattr(x, "dtype", None) == np.float32 else x
    tloss, tgrads = keras_loss_and_grads(twin_of(keras_model), x64, y, training, float64=True)
    floss, fgrads = keras_loss_and_grads(keras_model, x, y, training)
    worst64 = abs(loss - tloss)
    worst32 = abs(loss - floss)
    for v, g, t, f in zip(keras_model.trainable_weights, grads, tgrads, fgrads):
        assert np.allclose(g, t, atol=TWIN_ATOL, rtol=TWIN_RTOL), (
            f"{v.path}: scratch vs float64 twin, max |diff| = {max_abs(g, t):.3g}")
        assert np.allclose(g, f, atol=F32_TOL, rtol=F32_TOL), (
            f"{v.path}: scratch vs Keras float32, max |diff| = {max_abs(g, f):.3g}")
        worst64, worst32 = max(worst64, max_abs(g, t)), max(worst32, max_abs(g, f))
    assert abs(loss - tloss) <= TWIN_ATOL, (loss, tloss)
    assert abs(loss - floss) <= F32_TOL, (loss, floss)
    print(f"max|grad diff| vs float64 twin {worst64:.3g}, vs float32 {worst32:.3g}")
    return worst64, worst32


def finite_difference_check(scratch_model, x, y, training=False, seed=0, n_coords=6, h=1e-6,
                            rng_seed=0):
    """Central differences in float64 of scratch's own loss, at ``n_coords`` random
    coordinates of every trainable weight, against its analytic gradient. Returns the
    worst relative error."""
    _, grads = scratch_model.loss_and_gradients(x, y, training=training, seed=seed)
    weights = scratch_model.get_weights()
    flags = scratch_model.trainable_flags
    positions = [i for i, f in enumerate(flags) if f]
    rng = np.random.default_rng(rng_seed)
    worst = 0.0
    try:
        for g, pos in zip(grads, positions):
            for flat in rng.choice(g.size, size=min(n_coords, g.size), replace=False):
                idx = np.unravel_index(flat, g.shape)
                losses = []
                for sign in (1, -1):
                    ws = [w.copy() for w in weights]
                    ws[pos][idx] += sign * h
                    scratch_model.set_weights(ws)
                    losses.append(scratch_model.loss_and_gradients(x, y, training=training,
                                                                   seed=seed)[0])
                numeric = (losses[0] - losses[1]) / (2 * h)
                err = abs(numeric - g[idx]) / max(1e-6, abs(numeric) + abs(g[idx]))
                worst = max(worst, err)
    finally:
        scratch_model.set_weights(weights)
    return worst


def scale_diff(got, ref):
    """(max |got - ref|, the scale max(1, max |ref|)) in float64; the shapes must agree."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.abs(got - ref).max()), max(1.0, float(np.abs(ref).max()))


def check_layer_forward(scratch_models, index, h, h64, ref64, ref32, tol):
    """Layer ``index`` of each loaded scratch model: on the float64 input ``h64`` vs the
    float64 reference ``ref64`` (max |diff| <= tol * scale), and on the float32 input ``h``
    (computed in float64) vs Keras float32's ``ref32`` (F32_TOL * scale). Returns the worst
    differences (vs ref64, vs ref32)."""
    worst64 = worst32 = 0.0
    for m in scratch_models:
        d, scale = scale_diff(m.layers[index].forward(h64), ref64)
        assert d <= tol * scale, f"vs float64 reference: {d:.3g} (scale {scale:.3g})"
        d32, scale32 = scale_diff(m.layers[index].forward(h.astype(np.float64)), ref32)
        assert d32 <= F32_TOL * scale32, f"vs float32: {d32:.3g}"
        worst64, worst32 = max(worst64, d), max(worst32, d32)
    return worst64, worst32


def gradients_without_twin(keras_model, scratch_model, scratch_model32, x, y):
    """For models with no float64 twin (TF has no float64 kernel for a layer): scratch's
    float64 and float32 gradients vs Keras float32 (F32_TOL), and the float64 ones vs
    central differences of scratch's own loss (relative error < 1e-6). Returns (worst
    relative error vs finite differences, worst float64 gradient vs Keras float32)."""
    _, grads = scratch_model.loss_and_gradients(x, y)
    _, grads32 = scratch_model32.loss_and_gradients(x, y)
    _, fgrads = keras_loss_and_grads(keras_model, x, y)
    worst32 = 0.0
    for v, g, g32, f in zip(keras_model.trainable_weights, grads, grads32, fgrads):
        assert g.shape == tuple(v.shape) and g32.dtype == np.float32
        for mine in (g, g32):
            assert np.allclose(mine, f, atol=F32_TOL, rtol=F32_TOL), (v.path, max_abs(mine, f))
        worst32 = max(worst32, max_abs(g, f))
    fd = finite_difference_check(scratch_model, x, y)
    assert fd < 1e-6, fd
    return fd, worst32
