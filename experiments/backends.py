"""Backends in the test suite and the report: what each verification test records about the
implementation under test (:mod:`scratch_layers.verify.backends`), and ``results.json``'s
``backends[]``, the conformance matrix.

Every verification test records one ``"backend"`` measurement per case: the backend, the
case *group* (a study family ``cnn`` / ``rnn`` / ``lstm``, ``graph`` for the graph cases,
``applications`` for ``keras.applications``), the case, and its status:

* ``passed``  -- equal to Keras within the backend's gate (float64: the float64 twin within
  1e-9 relative to the output scale; float32: float32 Keras within atol + rtol 1e-5);
* ``refused`` -- the backend raised ``NotImplementedError`` or a class it declares;
* ``wrong``   -- it ran and differs: the record names the first node where it diverges
  (when the backend offers ``intermediate_outputs``) and by how much.

The ``backward`` group holds the backward checks (``tests/test_backward_models.py``, one
case per family baseline): the backend's ``loss_and_gradients(x, y)`` against Keras'
``tf.GradientTape`` on the float64 twin and on the float32 model
(:func:`check_backend_gradients`).  A backend without that method is *refused* there; a
wrong one names the first weight whose gradient differs (in the record's ``node``).

:func:`matrix` folds them into one row per (backend, group).
"""
from __future__ import annotations

import math

import pytest

GROUPS_ORDER = ("cnn", "rnn", "lstm", "graph", "applications", "backward")
BACKWARD = "backward"   # the case group of the backward checks


def record_case(request, backend, group: str, case: str, status: str, *, max_abs_diff=None,
                max_abs_diff_float64=None, precision=None, backend_seconds=None, keras_seconds=None,
                node=None, node_diff=None, message=None) -> None:
    """One case of one backend, for ``results.json`` ``backends[]``."""
    from .report.records import record
    record(request, "backend", backend=backend.name, group=group, case=case, status=status,
           precision=precision, max_abs_diff=_num(max_abs_diff), max_abs_diff_float64=_num(max_abs_diff_float64),
           backend_seconds=_num(backend_seconds), keras_seconds=_num(keras_seconds),
           node=node, node_diff=_num(node_diff), message=(message or "")[:600] or None)


def skip_refused(request, backend, group: str, case: str, refused) -> None:
    """Record a refusal and skip the test: a refused model is not a failure."""
    record_case(request, backend, group, case, "refused", message=refused.reason)
    pytest.skip(str(refused))


def _num(x):
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else float(x)


def _max(values):
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def matrix(records: list[dict]) -> list[dict]:
    """``backends[]``: one row per backend and case group, in the order backends were named:
    counts passed / refused / wrong, the worst difference against float32 Keras and against
    the float64 twin over the cases it ran, the forward ratio (its seconds over Keras' on the
    same cases, where both were timed), the first wrong case with its node, and the
    refusal reasons (distinct, first few)."""
    rows: dict[tuple, dict] = {}
    for r in records:
        row = rows.setdefault((r["backend"], r["group"]), {
            "backend": r["backend"], "group": r["group"], "passed": 0, "refused": 0, "wrong": 0,
            "precision": None, "cases": [], "first_wrong": None, "refusals": []})
        row[r["status"]] = row.get(r["status"], 0) + 1
        row["cases"].append(r)
        row["precision"] = row["precision"] or r.get("precision")
        if r["status"] == "wrong" and row["first_wrong"] is None:
            row["first_wrong"] = {k: r.get(k) for k in ("case", "node", "node_diff", "max_abs_diff",
                                                        "max_abs_diff_float64", "message")}
        if r["status"] == "refused" and r.get("message") and r["message"] not in row["refusals"] \
                and len(row["refusals"]) < 3:
            row["refusals"].append(r["message"])
    out = []
    for row in rows.values():
        cases = row.pop("cases")
        row["cases"] = [{k: c.get(k) for k in ("case", "status", "max_abs_diff", "max_abs_diff_float64")}
                        for c in cases]
        ran = [c for c in cases if c["status"] != "refused"]
        timed = [c for c in ran if c.get("backend_seconds") and c.get("keras_seconds")]
        row.update(
            n_cases=row["passed"] + row["refused"] + row["wrong"],
            worst_vs_keras=_max(c.get("max_abs_diff") for c in ran),
            worst_vs_twin=_max(c.get("max_abs_diff_float64") for c in ran),
            forward_ratio=(sum(c["backend_seconds"] for c in timed) / sum(c["keras_seconds"] for c in timed))
            if timed else None,
            timed_cases=len(timed))
        out.append(row)
    order = {g: i for i, g in enumerate(GROUPS_ORDER)}
    backends = list(dict.fromkeys(r["backend"] for r in records))
    return sorted(out, key=lambda r: (backends.index(r["backend"]), order.get(r["group"], 99), r["group"]))


def _outputs(out) -> list:
    """A model's output(s) as a list of float64 arrays (a dict in key order)."""
    import numpy as np
    if isinstance(out, dict):
        out = [out[k] for k in sorted(out)]
    elif not isinstance(out, (list, tuple)):
        out = [out]
    return [np.asarray(o, np.float64) for o in out]


def check_backend_case(request, backend, group: str, case: str, keras_model, path, x, twin_slack: float = 1.0):
    """One Keras model (saved at ``path``) on one backend, for the graph cases and the
    applications: load (a refusal skips), ``predict(x)`` against float32 Keras and the float64
    twin under the backend's gate, the result recorded (:func:`record_case`); a wrong output
    fails naming the first diverging node (when the backend offers ``intermediate_outputs``)
    and by how much.  Keras runs eagerly (``model(x)``): ``predict`` would trace a function."""
    import time

    import numpy as np

    from scratch_layers.verify.backends import Refused, has_intermediate_outputs
    from scratch_layers.verify.compare import first_divergence
    from scratch_layers.verify.keras import (ATOL, RTOL, as_float64, float64_twin, keras_intermediate_outputs,
                                             max_abs_diff, twin_tolerance)

    try:
        model = backend.load(path)
        t0 = time.perf_counter()
        got = backend.call(model.predict, x)
        seconds = time.perf_counter() - t0
    except Refused as exc:
        skip_refused(request, backend, group, case, exc)
    except Exception as exc:  # noqa: BLE001 - a crash is a wrong result: counted, then raised
        record_case(request, backend, group, case, "wrong", message=f"{type(exc).__name__}: {exc}")
        raise
    t0 = time.perf_counter()
    keras32 = _outputs(keras_model(x, training=False))
    keras_seconds = time.perf_counter() - t0
    twin = float64_twin(keras_model)
    twin_x = [as_float64(v) for v in x] if isinstance(x, list) else as_float64(x)
    twin_out = _outputs(twin(twin_x, training=False))
    precision = backend.precision_of(got)
    got = _outputs(got)
    if len(got) != len(keras32) or any(g.shape != k.shape for g, k in zip(got, keras32)):
        message = (f"{case}: backend {backend.name!r} returned shapes {[g.shape for g in got]}, "
                   f"Keras {[k.shape for k in keras32]}")
        record_case(request, backend, group, case, "wrong", precision=precision, message=message)
        raise AssertionError(message)
    d32 = max(max_abs_diff(g, k) for g, k in zip(got, keras32))
    d64 = max(max_abs_diff(g, t) for g, t in zip(got, twin_out))
    keras_off_twin = not all(np.allclose(k, t, atol=ATOL, rtol=RTOL) for k, t in zip(keras32, twin_out))
    near_keras = all(np.allclose(g, k, atol=ATOL, rtol=RTOL) for g, k in zip(got, keras32))
    if precision == "float32":
        ok = near_keras
    else:   # float64: the twin decides; float32 Keras too unless it is itself off its twin
        ok = all(max_abs_diff(g, t) <= twin_slack * twin_tolerance(t) for g, t in zip(got, twin_out)) \
            and (near_keras or keras_off_twin)
    node = node_diff = message = None
    if not ok:
        if has_intermediate_outputs(model):
            names_x = x
            ref = keras_intermediate_outputs(keras_model, names_x) if precision == "float32" else \
                keras_intermediate_outputs(twin, twin_x)
            atol, rtol = (ATOL, RTOL) if precision == "float32" else (twin_slack * 1e-9, 0.0)
            node, node_diff = first_divergence(backend.call(model.intermediate_outputs, x), ref, atol, rtol)
        where = (f"first diverging node {node!r} (max |diff| {node_diff:.3g} against "
                 f"{'float32 Keras' if precision == 'float32' else 'the float64 twin'})" if node else
                 "no per-node divergence (the backend offers no intermediate_outputs, or no node exceeds "
                 "the tolerance alone)")
        message = (f"{case}: backend {backend.name!r} ({precision}) != Keras: max|Δ| vs float32 Keras "
                   f"{d32:.3g}, vs float64 twin {d64:.3g}; {where}")
    record_case(request, backend, group, case, "passed" if ok else "wrong", max_abs_diff=d32,
                max_abs_diff_float64=d64, precision=precision, backend_seconds=seconds,
                keras_seconds=keras_seconds, node=node, node_diff=node_diff, message=message)
    assert ok, message
    print(f"{case} on {backend.name} ({precision}): max|Δ| vs float32 Keras {d32:.2e}, vs twin {d64:.2e}")
    return d64, d32


def backend_gradients(request, backend, case: str, path, x, y):
    """``(model, loss, grads)``: the backend's model of ``path`` and its
    ``loss_and_gradients(x, y)``, for the ``backward`` group.  A refused load, a model
    without ``loss_and_gradients`` or a refused call is recorded as *refused* and skips the
    test; a crash is recorded as *wrong* and raised."""
    from scratch_layers.verify.backends import Refused, has_gradients
    try:
        model = backend.load(path)
        if not has_gradients(model):
            raise Refused(backend.name, "its model offers no loss_and_gradients(x, y), so the backward "
                                        "checks cannot run (see scratch_layers/verify/backends.py)")
        loss, grads = backend.call(model.loss_and_gradients, x, y)
    except Refused as exc:
        skip_refused(request, backend, BACKWARD, case, exc)
    except Exception as exc:  # noqa: BLE001 - a crash is a wrong result: counted, then raised
        record_case(request, backend, BACKWARD, case, "wrong", message=f"{type(exc).__name__}: {exc}")
        raise
    return model, loss, grads


def check_backend_gradients(request, backend, case: str, weight_paths, got, twin, keras32, *,
                            twin_atol: float, twin_rtol: float, f32_tol: float):
    """One backward case: the backend's ``got = (loss, grads)`` against Keras' float64 twin
    ``twin = (loss, grads)`` and float32 Keras ``keras32`` (``tf.GradientTape``, computed by
    the caller), ``grads`` in the order of ``keras_model.trainable_weights`` (named by
    ``weight_paths``).

    Gate per weight ``w`` (and for the loss, a scalar): a float64 backend needs
    ``|g - g_twin| <= twin_atol + twin_rtol |g_twin|`` and ``|g - g_keras| <= f32_tol (1 + |g_keras|)``;
    a float32 one (declared, or float32 gradients) the float32 gate only.  The result is
    recorded (:func:`record_case`, group ``backward``); a wrong one fails naming the case,
    the first weight that differs and by how much.  Returns (worst vs twin, worst vs float32)."""
    import numpy as np

    from scratch_layers.verify.keras import max_abs_diff

    loss, grads = got[0], list(got[1])
    precision = backend.precision_of(grads)

    def wrong(message, weight=None, diff=None):
        record_case(request, backend, BACKWARD, case, "wrong", precision=precision, node=weight,
                    node_diff=diff, message=message)
        raise AssertionError(message)

    if len(grads) != len(weight_paths):
        wrong(f"{case}: backend {backend.name!r} returned {len(grads)} gradients; the model has "
              f"{len(weight_paths)} trainable weights (loss_and_gradients must return one per weight of "
              "keras_model.trainable_weights, in that order)")
    named = []
    for path, g, t, k in zip(weight_paths, grads, twin[1], keras32[1]):
        g = np.asarray(g, np.float64)
        if g.shape != np.shape(t):
            wrong(f"{case}: backend {backend.name!r}: the gradient of {path!r} has shape {g.shape}, the "
                  f"weight {np.shape(t)}", path)
        named.append((path, g, t, k))
    named.append(("loss", np.asarray(loss, np.float64), twin[0], keras32[0]))   # after the weights
    worst64 = worst32 = 0.0
    for path, g, t, k in named:
        d64, d32 = max_abs_diff(g, t), max_abs_diff(g, k)
        worst64, worst32 = max(worst64, d64), max(worst32, d32)
        off_twin = precision == "float64" and not np.allclose(g, t, atol=twin_atol, rtol=twin_rtol)
        off_keras = not np.allclose(g, k, atol=f32_tol, rtol=f32_tol)
        if off_twin or off_keras:
            against, diff, tol = (("the float64 twin", d64, f"atol {twin_atol:g} + rtol {twin_rtol:g}")
                                  if off_twin else ("float32 Keras", d32, f"atol + rtol {f32_tol:g}"))
            what = "the loss differs" if path == "loss" else f"first weight whose gradient differs: {path!r}"
            wrong(f"{case}: backend {backend.name!r} ({precision}) loss_and_gradients != Keras: {what} "
                  f"(max |diff| {diff:.3g} against {against}, tolerance {tol})", path, diff)
    record_case(request, backend, BACKWARD, case, "passed", max_abs_diff=worst32, max_abs_diff_float64=worst64,
                precision=precision)
    print(f"{case} backward on {backend.name} ({precision}): max|Δ| vs float64 twin {worst64:.2e}, "
          f"vs float32 Keras {worst32:.2e}")
    return worst64, worst32
