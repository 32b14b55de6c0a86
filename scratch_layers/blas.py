"""Best-effort control of the OpenBLAS thread count used by NumPy (stdlib ctypes only).

Why: a recurrent layer does one small matmul per timestep; with a multi-threaded
BLAS every call pays a thread hand-off, which dominates (and becomes dramatically
slow when the CPUs are shared with other processes). We therefore run the time
loop with one BLAS thread and restore the previous setting afterwards. If the
OpenBLAS library cannot be found this is a no-op.
"""
import contextlib
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_lock = threading.Lock()
_funcs = None


def _find():
    global _funcs
    if _funcs is not None:
        return _funcs
    _funcs = False
    try:
        with open("/proc/self/maps") as fh:
            libs = sorted({ln.split()[-1] for ln in fh if "openblas" in ln.lower() and ".so" in ln})
    except OSError:
        return _funcs
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("openblas", "64_"), ("openblas", "")):
            set_f = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            get_f = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            core_f = getattr(lib, f"{prefix}_get_corename{suffix}", None)
            if set_f is not None and get_f is not None:
                set_f.argtypes = [ctypes.c_int]
                get_f.restype = ctypes.c_int
                if core_f is not None:
                    core_f.restype = ctypes.c_char_p
                _funcs = (set_f, get_f, core_f)
                return _funcs
    return _funcs


def blas_info():
    """What NumPy's matmuls run on: ``{"openblas_core": the kernel family OpenBLAS chose
    when it loaded (e.g. "SkylakeX" for AVX-512, "Haswell" for AVX2; None when OpenBLAS
    is not found), "OPENBLAS_CORETYPE": that environment variable (None when unset), which
    forces the choice}``. A forced older core (e.g. Haswell on an AVX-512 CPU) runs the
    matmuls at about half speed; nothing here changes it, since OpenBLAS reads the
    variable only when NumPy is first imported."""
    funcs = _find()
    core = funcs[2]().decode("ascii", "replace") if funcs and funcs[2] is not None else None
    return {"openblas_core": core, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


_depth = 0
_saved = None


@contextlib.contextmanager
def blas_threads(n):
    """Use ``n`` BLAS threads while any ``blas_threads`` block is active (no-op when
    OpenBLAS is not found). Re-entrant and usable from several threads at once: the
    first entrant saves and sets the count, the last leaver restores it (the lock is
    never held while the body runs)."""
    global _depth, _saved
    funcs = _find()
    if not funcs:
        yield
        return
    set_f, get_f, _ = funcs
    with _lock:
        if _depth == 0:
            _saved = get_f()
            set_f(n)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                set_f(_saved)


# ----------------------------------------------------------------------------- row-split work
# Training runs one batch with one BLAS thread (above); its large conv matmuls and its
# large elementwise passes (memory-bound: one core does not saturate the memory bus) are
# split into row blocks computed on a small thread pool instead (NumPy releases the GIL
# in BLAS and in ufunc loops). The blocks are fixed by the row count and the worker
# count, so results are deterministic.
PARALLEL_MIN_ROWS = 4096
PARALLEL_MIN_ITEMS = 1 << 17  # below this, a thread hand-off costs more than it saves
_pools = {}
_WORKER_PREFIX = "scratch-matmul"


def default_workers():
    """Threads for coarse-grained parallel work (predict chunks, training matmul blocks):
    one per usable CPU, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def _blocks(n, workers):
    bounds = [n * i // workers for i in range(workers + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _map(fn, items, workers):
    pool = _pools.get(workers)
    if pool is None:
        pool = _pools[workers] = ThreadPoolExecutor(workers, thread_name_prefix=_WORKER_PREFIX)
    return list(pool.map(fn, items))


def _in_worker():
    """Whether this thread is one of the pool's (a nested map would wait on itself)."""
    return threading.current_thread().name.startswith(_WORKER_PREFIX)


def for_blocks(fn, n, items):
    """``[fn(s) for s in blocks]``: ``fn(slice)`` on consecutive row blocks covering
    ``range(n)``, one per worker thread when the work (``items`` values in all) is large
    enough, else one call on ``slice(0, n)``. ``fn`` writes its block's rows of
    preallocated outputs and/or returns a partial result (e.g. a per-block sum)."""
    workers = default_workers()
    if workers == 1 or n < 2 or items < PARALLEL_MIN_ITEMS or _in_worker():
        return [fn(slice(0, n))]
    return _map(fn, _blocks(n, workers), workers)


def block_sum(fn, n, items):
    """The sum over row blocks of ``fn(slice)`` (see :func:`for_blocks`)."""
    parts = for_blocks(fn, n, items)
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    return total


def rows_matmul(a, b, bias=None):
    """``a @ b (+ bias)`` for 2-D arrays, the rows of ``a`` split over the CPUs."""
    workers = default_workers()
    if workers == 1 or a.shape[0] < PARALLEL_MIN_ROWS or _in_worker():
        out = np.matmul(a, b)
        if bias is not None:
            out += bias
        return out
    out = np.empty((a.shape[0], b.shape[1]), np.result_type(a, b))

    def block(s):
        np.matmul(a[s], b, out=out[s])
        if bias is not None:
            out[s] += bias
    _map(block, _blocks(a.shape[0], workers), workers)
    return out


def rows_matmul_tn(a, b):
    """``a.T @ b`` for 2-D arrays with many rows: per row block a[s].T @ b[s], summed."""
    workers = default_workers()
    if workers == 1 or a.shape[0] < PARALLEL_MIN_ROWS or _in_worker():
        return np.matmul(a.T, b)
    parts = _map(lambda s: np.matmul(a[s].T, b[s]), _blocks(a.shape[0], workers), workers)
    out = parts[0]
    for p in parts[1:]:
        out += p
    return out
