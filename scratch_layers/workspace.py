"""Scratch buffers reused across the blocks and chunks of one thread.

A convolution's patch matrix or Winograd transform is rewritten for every block of
images; allocating it afresh each time costs page faults on every pass. Each thread
keeps its own buffers (predict's workers run chunks concurrently), grown when a larger
one is asked for, so the hot loop allocates once per thread and shape class. A buffer
is only valid until the same thread asks for the same name again: callers use it as a
temporary, never as an output.
"""
from __future__ import annotations

import math
import threading

import numpy as np

_local = threading.local()


def buffer(name, shape, dtype):
    """An uninitialised array of ``shape`` and ``dtype``, backed by this thread's buffer
    ``name`` (reallocated only when it is too small)."""
    dtype = np.dtype(dtype)
    size = math.prod(int(d) for d in shape)  # Python ints: no ufunc call per buffer
    store = getattr(_local, "store", None)
    if store is None:
        store = _local.store = {}
    key = (name, dtype)
    raw = store.get(key)
    if raw is None or raw.size < size:
        raw = store[key] = np.empty(size, dtype)
    return raw[:size].reshape(shape)


def release():
    """Drop this thread's buffers."""
    _local.store = {}
