"""Best-effort control of the BLAS thread count used by NumPy, through ``threadpoolctl``.

Why: a recurrent layer does one small matmul per timestep; with a multi-threaded
BLAS every call pays a thread hand-off, which dominates (and becomes dramatically
slow when the CPUs are shared with other processes). Prediction and training also
spread their work over their own worker threads (predict chunks, row blocks below),
so each of those must run with one BLAS thread or the two kinds of threads
oversubscribe the CPUs. We therefore run that work with one BLAS thread and restore
the previous setting afterwards. If no BLAS library is found this is a no-op.
"""
import contextlib
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_lock = threading.Lock()
_init_lock = threading.Lock()
_blas = None  # the BLAS libraries' controllers (a list, empty when none), built once
_release = None  # gives back threadpoolctl's OpenBLAS "controlling thread" (see _set_counts)


def _controllers():
    """The ``threadpoolctl`` controllers of the loaded BLAS libraries (``user_api="blas"``),
    from one ``ThreadpoolController`` built on first use and kept: building one scans the
    loaded shared libraries, which is too slow per call. NumPy's BLAS is loaded when NumPy
    is imported, before anything here runs, so the one scan finds it. ``threadpoolctl`` is
    imported here, not at module level, so that importing scratch_layers does not pay for
    it. An empty list when threadpoolctl or a BLAS library is missing."""
    global _blas, _release
    if _blas is not None:
        return _blas
    with _init_lock:
        if _blas is None:
            try:
                import threadpoolctl
            except ImportError:
                _blas = []
            else:
                openblas = getattr(threadpoolctl, "OpenBLASController", None)
                _release = getattr(openblas, "clear_controlling_thread", None)  # threadpoolctl >= 3.7
                _blas = list(threadpoolctl.ThreadpoolController().select(user_api="blas").lib_controllers)
    return _blas


def _set_counts(counts):
    """Set each BLAS library's thread count (``counts`` aligned with :func:`_controllers`).

    threadpoolctl (3.8) lets only one Python thread at a time set OpenBLAS's process-wide
    count: the first thread that sets it becomes its "controlling thread", and a set from
    any other thread is silently ignored while that one is alive. Here the first entrant
    of :func:`blas_threads` and its last leaver may be different threads, so after each
    change this thread gives the control back (a no-op unless it holds it); a thread of
    someone else's that holds the control (inside its own ``threadpool_limits``) keeps it,
    and our change is then skipped, as threadpoolctl intends."""
    for lib, n in zip(_controllers(), counts):
        if n is not None:
            lib.set_num_threads(n)
    if _release is not None:
        _release()


def blas_info():
    """What NumPy's matmuls run on: ``{"openblas_core": the kernel family OpenBLAS chose
    when it loaded (e.g. "SkylakeX" for AVX-512, "Haswell" for AVX2; None when OpenBLAS
    is not found), "OPENBLAS_CORETYPE": that environment variable (None when unset), which
    forces the choice}``. A forced older core (e.g. Haswell on an AVX-512 CPU) runs the
    matmuls at about half speed; nothing here changes it, since OpenBLAS reads the
    variable only when NumPy is first imported."""
    openblas = [lib.info() for lib in _controllers() if lib.internal_api == "openblas"]
    # NumPy's own OpenBLAS first, should another library have loaded one as well
    openblas.sort(key=lambda info: "numpy" not in info["filepath"])
    core = openblas[0].get("architecture") if openblas else None
    return {"openblas_core": core, "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE")}


_depth = 0
_saved = None


@contextlib.contextmanager
def blas_threads(n):
    """Use ``n`` BLAS threads while any ``blas_threads`` block is active (no-op when
    no BLAS library is found). Re-entrant and usable from several threads at once: the
    first entrant saves and sets the count, the last leaver restores it (the lock is
    never held while the body runs)."""
    global _depth, _saved
    if not _controllers():
        yield
        return
    with _lock:
        if _depth == 0:
            _saved = [lib.num_threads for lib in _controllers()]
            _set_counts([n] * len(_saved))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set_counts(_saved)


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
