"""The backward pass on each family's trained baseline, for the report (kind "backward"):

* per layer, max |scratch - Keras| over the layer's gradients on one training batch,
  against the float64 twin (atol 1e-9, rtol 1e-7) and the float32 model (1e-5);
* text baselines: a training replay of one epoch of the training split (fixed order,
  recipe batch size, Adam 1e-3, Dropout off) with scratch_layers and with Keras from the
  same initial weights; the per-step losses of both are recorded and must agree.

With ``pytest --backend NAME`` the gradient check runs on each named backend's
``loss_and_gradients(x, y)`` (group ``backward`` of the conformance matrix,
:func:`experiments.backends.check_backend_gradients`); the per-layer table and the replay
are scratch_layers' own and run for the default backend only.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import (F32_TOL, TWIN_ATOL, TWIN_RTOL, keras_loss_and_grads,  # noqa: E402
                              max_abs, twin_of)

import scratch_layers  # noqa: E402
from experiments.backends import backend_gradients, check_backend_gradients  # noqa: E402
from experiments.plugin import Run, trained_or_skip  # noqa: E402
from experiments.report.records import record  # noqa: E402

pytestmark = [pytest.mark.slow]

GRAD_BATCH = 32
REPLAY_LR = 1e-3
REPLAY_LOSS_TOL = 1e-4    # Keras trains in float32: its losses drift from float64 slowly


def layer_table(scratch_model, grads, twin_grads, f32_grads):
    """Rows per layer with trainable weights (the gradients are consumed in layer order,
    as trainable_weights lists them): max |Δ| vs the twin and vs float32."""
    rows, i = [], 0
    for layer in scratch_model.layers:
        n = sum(layer.trainable_flags())
        if not n:
            continue
        items = list(zip(grads[i:i + n], twin_grads[i:i + n], f32_grads[i:i + n]))
        i += n
        rows.append({"layer": layer.name, "class": layer.class_name, "n_weights": n,
                     "max_abs_diff_float64": max(max_abs(g, t) for g, t, _ in items),
                     "max_abs_diff_float32": max(max_abs(g, f) for g, _, f in items),
                     "max_abs_grad": max(float(np.abs(g).max()) for g, _, _ in items)})
    return rows


def dropout_off(keras_model):
    """The same model with every Dropout rate 0 (same weights and vocabulary)."""
    import keras
    cfg = keras_model.get_config()
    for entry in cfg["layers"]:
        if entry["class_name"] in ("Dropout", "SpatialDropout1D"):
            entry["config"]["rate"] = 0.0
    model = type(keras_model).from_config(cfg)
    model.set_weights(keras_model.get_weights())
    for src, dst in zip(keras_model.layers, model.layers):
        if isinstance(src, keras.layers.TextVectorization):
            dst.set_vocabulary(src.get_vocabulary())
    return model


def replay(keras_model, tmp_path, x, y, batch):
    """One epoch, fixed order: Keras and scratch train_on_batch from the same weights."""
    import keras
    km = dropout_off(keras_model)
    path = os.path.join(str(tmp_path), "dropout_off.keras")
    km.save(path)
    sm = scratch_layers.load_model(path)
    km.compile(optimizer=keras.optimizers.Adam(REPLAY_LR), loss=keras.losses.SparseCategoricalCrossentropy())
    opt = scratch_layers.Adam(REPLAY_LR)
    klosses, slosses = [], []
    data = list(x) if x.dtype == object else x
    for s in range(0, len(x), batch):
        km.reset_metrics()
        klosses.append(float(km.train_on_batch(x[s:s + batch], y[s:s + batch])))
        slosses.append(sm.train_on_batch(data[s:s + batch], y[s:s + batch], opt))
    weight_diff = max(max_abs(a, b) for a, b in zip(km.get_weights(), sm.get_weights()))
    return klosses, slosses, weight_diff


def test_baseline_gradients_and_replay(pytestconfig, family, profile, request, tmp_path, backend):
    tm = trained_or_skip(pytestconfig, family, family.baseline, profile)
    case = Run(family, family.baseline, tm.seed).id
    splits = family.load_data()
    x, y = splits.x_train[:GRAD_BATCH], np.asarray(splits.y_train[:GRAD_BATCH])
    data = list(x) if x.dtype == object else x
    sm, loss, grads = backend_gradients(request, backend, case, tm.path, data, y)  # refused: skips
    keras_model = tm.load_keras()
    x64 = x.astype(np.float64) if x.dtype == np.float32 else x
    tloss, tgrads = keras_loss_and_grads(twin_of(keras_model), x64, y, float64=True)
    floss, fgrads = keras_loss_and_grads(keras_model, x, y)
    check_backend_gradients(request, backend, case, [v.path for v in keras_model.trainable_weights],
                            (loss, grads), (tloss, tgrads), (floss, fgrads),
                            twin_atol=TWIN_ATOL, twin_rtol=TWIN_RTOL, f32_tol=F32_TOL)
    if not backend.is_default:  # the per-layer table and the replay are scratch_layers' own
        return
    rows = layer_table(sm, grads, tgrads, fgrads)
    data_record = dict(family=family.name, model=tm.entry.path.name, batch=GRAD_BATCH, loss=loss,
                       loss_diff_float64=abs(loss - tloss), loss_diff_float32=abs(loss - floss),
                       layers=rows)
    if x.dtype == object:  # text baseline: the training replay
        batch = family.recipe[profile]["batch_size"]
        xs, ys = splits.x_train, np.asarray(splits.y_train)
        klosses, slosses, wdiff = replay(keras_model, tmp_path, xs, ys, batch)
        loss_diff = max(abs(a - b) for a, b in zip(klosses, slosses))
        data_record["replay"] = dict(keras_losses=klosses, scratch_losses=slosses, batch=batch,
                                     n_items=len(xs), learning_rate=REPLAY_LR, full_epoch=True,
                                     max_loss_diff=loss_diff, max_weight_diff=wdiff)
        print(f"replay: {len(klosses)} steps, max |loss diff| {loss_diff:.2e}, weights {wdiff:.2e}")
        assert loss_diff < REPLAY_LOSS_TOL
    record(request, "backward", **data_record)
    for r in rows:
        print(f"{r['layer']:28s} {r['class']:20s} twin {r['max_abs_diff_float64']:.2e}  "
              f"float32 {r['max_abs_diff_float32']:.2e}")
