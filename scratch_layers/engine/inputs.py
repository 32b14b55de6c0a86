"""Checking what a user passes in before it reaches the graph."""
from __future__ import annotations

import numpy as np

# The NaN/inf check reads the input in blocks of this size (its boolean temporaries
# stay small however large the input is).
FINITE_CHECK_BYTES = 4 * 2 ** 20


def first_nonfinite(arr, block_bytes=FINITE_CHECK_BYTES):
    """Index (tuple) of the first NaN/inf of ``arr`` or None, checked block by block
    along the batch axis so that memory stays bounded on a large input."""
    if arr.ndim == 0 or arr.size == 0:
        return None if arr.size == 0 or np.isfinite(arr) else ()
    rows = max(1, block_bytes // max(1, arr[:1].nbytes))
    for s in range(0, len(arr), rows):
        finite = np.isfinite(arr[s:s + rows])
        if not finite.all():
            bad = np.argwhere(~finite)[0]
            return (int(bad[0]) + s,) + tuple(int(i) for i in bad[1:])
    return None
