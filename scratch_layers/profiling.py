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
    :func:`gemm_clock` runs. A tall 2-D product with a small (K, N) operand runs in row
    blocks (:func:`_matmul`)."""
    clock = _clock
    if clock is None:
        return _matmul(a, b, out)
    start = time.perf_counter()
    y = _matmul(a, b, out)
    clock.add(time.perf_counter() - start, 2 * y.size * a.shape[-1])
    return y


# OpenBLAS (0.3.x, AVX-512 kernels) multiplies products of at most 10**6 multiply-adds
# with its small-matrix kernels, which skip packing the operands. For a tall (M, K) @ (K, N)
# with K*N up to a few thousand that is 1.5-1.7x faster per row than the packed path
# (measured on the 2-core Xeon: (18432, 27) @ (27, 32) 314 us in one call, 189 us in
# blocks of 1,024 rows); for larger K*N the packed path is as fast, so it is left alone.
SMALL_GEMM_MACS = 10 ** 6
SMALL_GEMM_MAX_KN = 4096


def _matmul(a, b, out):
    m = a.shape[0] if a.ndim == 2 else 0
    kn = b.shape[0] * b.shape[-1] if b.ndim == 2 else 0
    if not (a.ndim == 2 and 0 < kn <= SMALL_GEMM_MAX_KN and m * kn > SMALL_GEMM_MACS):
        return np.matmul(a, b, out=out)
    if out is None:
        out = np.empty((m, b.shape[1]), np.result_type(a, b))
    rows = SMALL_GEMM_MACS // kn
    for i in range(0, m, rows):
        np.matmul(a[i:i + rows], b, out=out[i:i + rows])
    return out


@contextlib.contextmanager
def gemm_clock():
    """``with gemm_clock() as clock:`` times every :func:`gemm` in the block (all threads)."""
    global _clock
    previous, _clock = _clock, GemmClock()
    try:
        yield _clock
    finally:
        _clock = previous
