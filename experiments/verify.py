"""Scratch vs Keras on a whole test split: probabilities, argmax, macro-F1, per layer.

Tolerances follow the project standard: ``np.allclose(scratch, keras, atol=1e-5,
rtol=1e-5)`` on the softmax outputs, the same argmax for every item and equal
macro-F1.  When a model fails, :func:`layer_divergence` finds the first layer whose
intermediate outputs differ, so the failure says *where*.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

ATOL = 1e-5
RTOL = 1e-5
KERAS_BATCH = 256


@dataclass
class Verification:
    n_test: int
    keras_f1: float
    scratch_f1: float
    keras_accuracy: float
    predicted_classes: int    # distinct classes Keras predicts; 1 means a collapsed model
    per_class_f1: list        # test F1 of each class (Keras predictions)
    agreement: float          # fraction of items with the same argmax
    max_abs_diff: float       # max |p_scratch - p_keras| over all items and classes
    allclose: bool
    confusion: list           # rows = true class, columns = Keras prediction
    keras_seconds: float
    scratch_seconds: float

    @property
    def passed(self) -> bool:
        return (self.allclose and self.agreement == 1.0 and self.max_abs_diff <= ATOL
                and round(self.keras_f1, 4) == round(self.scratch_f1, 4))

    def as_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def keras_predict(keras_model, x, batch_size: int = KERAS_BATCH) -> np.ndarray:
    return np.asarray(keras_model.predict(x, batch_size=batch_size, verbose=0), dtype=np.float64)


def compare(keras_probs: np.ndarray, scratch_probs: np.ndarray, y_true: np.ndarray,
            n_classes: int, keras_seconds: float = 0.0, scratch_seconds: float = 0.0) -> Verification:
    from sklearn.metrics import confusion_matrix, f1_score

    if keras_probs.shape != scratch_probs.shape:
        raise AssertionError(f"output shapes differ: Keras {keras_probs.shape}, scratch {scratch_probs.shape}")
    kp, sp = keras_probs.argmax(-1), scratch_probs.argmax(-1)
    labels = list(range(n_classes))
    return Verification(
        n_test=int(len(y_true)),
        keras_f1=float(f1_score(y_true, kp, average="macro", labels=labels, zero_division=0)),
        scratch_f1=float(f1_score(y_true, sp, average="macro", labels=labels, zero_division=0)),
        keras_accuracy=float(np.mean(kp == y_true)),
        predicted_classes=int(len(np.unique(kp))),
        per_class_f1=[float(f) for f in f1_score(y_true, kp, average=None, labels=labels, zero_division=0)],
        agreement=float(np.mean(kp == sp)),
        max_abs_diff=float(np.max(np.abs(keras_probs - scratch_probs))) if keras_probs.size else 0.0,
        allclose=bool(np.allclose(scratch_probs, keras_probs, atol=ATOL, rtol=RTOL)),
        confusion=confusion_matrix(y_true, kp, labels=labels).tolist(),
        keras_seconds=round(keras_seconds, 3), scratch_seconds=round(scratch_seconds, 3))


def misclassified_examples(y_true: np.ndarray, keras_probs: np.ndarray, n: int = 8) -> list[dict]:
    """The ``n`` test items Keras gets wrong with the most confidence: index, true, predicted, p."""
    pred = keras_probs.argmax(-1)
    wrong = np.flatnonzero(pred != y_true)
    wrong = wrong[np.argsort(-keras_probs[wrong, pred[wrong]], kind="stable")][:n]
    return [{"index": int(i), "true": int(y_true[i]), "predicted": int(pred[i]),
             "confidence": float(keras_probs[i, pred[i]])} for i in wrong]


def verify_model(keras_model, scratch_model, x_test, y_test, n_classes: int) -> tuple[Verification, np.ndarray, np.ndarray]:
    """Run both forward passes on the whole split; return the comparison and both outputs."""
    t0 = time.perf_counter()
    kp = keras_predict(keras_model, x_test)
    t1 = time.perf_counter()
    sp = scratch_model.predict(x_test)
    t2 = time.perf_counter()
    return compare(kp, sp, y_test, n_classes, t1 - t0, t2 - t1), kp, sp


def keras_intermediate_outputs(keras_model, x) -> dict[str, np.ndarray]:
    """Output of every non-input layer of a functional Keras model, by layer name."""
    import keras

    layers = [l for l in keras_model.layers if not isinstance(l, keras.layers.InputLayer)]
    probe = keras.Model(keras_model.inputs, [l.output for l in layers])
    outs = probe.predict(x, batch_size=KERAS_BATCH, verbose=0)
    return {l.name: np.asarray(o) for l, o in zip(layers, outs)}


def layer_divergence(keras_model, scratch_model, x) -> list[dict]:
    """Per-layer table: name, class, output shape, max |scratch - Keras| and allclose on ``x``."""
    kout = keras_intermediate_outputs(keras_model, x)
    sout = scratch_model.intermediate_outputs(x)
    rows = []
    for layer in scratch_model.layers:
        s = sout.get(layer.name)
        k = kout.get(layer.name)
        row = {"layer": layer.name, "class": type(layer).__name__,
               "shape": list(np.shape(s)[1:]) if s is not None else None,
               "max_abs_diff": None, "allclose": None}
        if s is not None and k is not None and np.shape(s) == np.shape(k):
            s64, k64 = np.asarray(s, np.float64), np.asarray(k, np.float64)
            row["max_abs_diff"] = float(np.abs(s64 - k64).max()) if s64.size else 0.0
            row["allclose"] = bool(np.allclose(s64, k64, atol=ATOL, rtol=RTOL))
        rows.append(row)
    return rows


def failure_message(name: str, v: Verification, keras_model, scratch_model, x_test,
                    keras_probs, scratch_probs) -> str:
    """Explain a failed verification: the numbers, then the first diverging layer."""
    import scratch_layers

    worst = np.argsort(-np.abs(keras_probs - scratch_probs).max(-1))[:32]  # the worst items only
    worst = np.sort(worst)
    sout = scratch_model.intermediate_outputs(x_test[worst])
    kout = keras_intermediate_outputs(keras_model, x_test[worst])
    layer, diff = scratch_layers.first_divergence(sout, kout, ATOL, RTOL)
    where = (f"first diverging layer: {layer!r} (max |diff| {diff:.3g} on the 32 worst items)"
             if layer else f"no single layer exceeds the tolerance (worst layer diff {diff:.3g})")
    return (f"{name}: scratch != Keras on {v.n_test} test items: agreement {v.agreement:.4%}, "
            f"max|dp| {v.max_abs_diff:.3g} (atol {ATOL}), macro-F1 Keras {v.keras_f1:.4f} vs "
            f"scratch {v.scratch_f1:.4f}; {where}")
