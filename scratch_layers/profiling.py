"""The forward pass's matrix products, and an optional clock on them.

Every GEMM of predict's hot path (convolution, Dense, the Winograd transform points)
goes through :func:`gemm`, so a profiler can split a forward pass into GEMM time and
everything else (:func:`gemm_clock`). When no clock runs, :func:`gemm` is ``np.matmul``
plus one attribute read.
"""
from __future__ import annotations

import contextlib
import threading
import time

import numpy as np


class GemmClock:
    """Seconds and FLOPs spent in :func:`gemm` while the clock runs, summed over threads
    (so with two workers the seconds are CPU-seconds, not wall time)."""

    def __init__(self):
        self.seconds = 0.0
        self.flops = 0
        self.calls = 0
        self._lock = threading.Lock()

    def add(self, seconds, flops):
        with self._lock:
            self.seconds += seconds
            self.flops += flops
            self.calls += 1


_clock = None


def gemm(a, b, out=None):
    """``np.matmul(a, b, out=out)`` for 2-D or stacked (batched) operands, timed when a
    :func:`gemm_clock` runs."""
    clock = _clock
    if clock is None:
        return np.matmul(a, b, out=out)
    start = time.perf_counter()
    y = np.matmul(a, b, out=out)
    clock.add(time.perf_counter() - start, 2 * y.size * a.shape[-1])
    return y


@contextlib.contextmanager
def gemm_clock():
    """``with gemm_clock() as clock:`` times every :func:`gemm` in the block (all threads)."""
    global _clock
    previous, _clock = _clock, GemmClock()
    try:
        yield _clock
    finally:
        _clock = previous
