"""Best-effort control of the OpenBLAS thread count used by NumPy (stdlib ctypes only).

Why: a recurrent layer does one small matmul per timestep; with a multi-threaded
BLAS every call pays a thread hand-off, which dominates (and becomes dramatically
slow when the CPUs are shared with other processes). We therefore run the time
loop with one BLAS thread and restore the previous setting afterwards. If the
OpenBLAS library cannot be found this is a no-op.
"""
import contextlib
import ctypes
import threading

_lock = threading.RLock()  # re-entrant: nested use must not deadlock
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
            if set_f is not None and get_f is not None:
                set_f.argtypes = [ctypes.c_int]
                get_f.restype = ctypes.c_int
                _funcs = (set_f, get_f)
                return _funcs
    return _funcs


@contextlib.contextmanager
def blas_threads(n):
    """Temporarily use ``n`` BLAS threads (no-op when OpenBLAS is not found)."""
    funcs = _find()
    if not funcs:
        yield
        return
    set_f, get_f = funcs
    with _lock:
        old = get_f()
        set_f(n)
        try:
            yield
        finally:
            set_f(old)
