"""Comparing two runs of a model node by node."""
from __future__ import annotations

import numpy as np


def first_divergence(scratch_outputs, keras_outputs, atol=1e-5, rtol=1e-5):
    """Walk layers in order (the order of ``scratch_outputs``) and return
    ``(layer_name, max_abs_diff)`` of the first layer whose outputs are not
    ``np.allclose(scratch, keras, atol, rtol)``. Layers missing from
    ``keras_outputs`` are skipped; a shape mismatch counts as divergence (diff inf).
    If nothing diverges returns ``(None, worst max_abs_diff seen)``."""
    worst = 0.0
    for name, s in scratch_outputs.items():
        if name not in keras_outputs:
            continue
        s = np.asarray(s, dtype=np.float64)
        k = np.asarray(keras_outputs[name], dtype=np.float64)
        if s.shape != k.shape:
            return name, float("inf")
        diff = float(np.max(np.abs(s - k))) if s.size else 0.0
        if not np.allclose(s, k, atol=atol, rtol=rtol, equal_nan=True):
            return name, diff
        worst = max(worst, diff)
    return None, worst
