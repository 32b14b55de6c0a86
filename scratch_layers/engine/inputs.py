"""Checking what a user passes in before it reaches the graph: one array, a list or a dict
by input name, of the right rank, shape and dtype, finite unless allowed; cast to the
compute dtype chunk by chunk."""
from __future__ import annotations

import numpy as np

from ..errors import InputError

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


def split_inputs(model, x):
    """The model's inputs as a list, from one array, a list/tuple or a dict by name."""
    n = len(model.input_layers)
    if isinstance(x, dict):
        missing = [k for k in model.input_names if k not in x]
        extra = [k for k in x if k not in model.input_names]
        if missing or extra:
            raise InputError(f"model '{model.name}' takes inputs {model.input_names}; the dict "
                             f"{'lacks ' + str(missing) if missing else ''}"
                             f"{' and ' if missing and extra else ''}"
                             f"{'has unknown ' + str(extra) if extra else ''}")
        return [x[k] for k in model.input_names]
    if n == 1:
        if isinstance(x, (list, tuple)) and len(x) == 1 and isinstance(x[0], np.ndarray):
            return [x[0]]
        return [x]
    if not isinstance(x, (list, tuple)) or len(x) != n:
        got = f"a {type(x).__name__} of {len(x)}" if isinstance(x, (list, tuple)) else \
            f"one {type(x).__name__}"
        raise InputError(f"model '{model.name}' has {n} inputs {model.input_names}: pass a list of "
                         f"{n} arrays in that order or a dict keyed by those names, got {got}")
    return list(x)


def prepare_inputs(model, x, allow_nonfinite=False):
    """The model's inputs as a list of checked arrays (one per input, in input order), from
    one array, a list or a dict by input name; floats keep their dtype (see :func:`as_compute`)."""
    xs = [_prepare_one(model, v, layer, kind, reader, allow_nonfinite)
          for v, layer, kind, reader in zip(split_inputs(model, x), model.input_layers, model.input_kinds,
                                            model.input_readers)]
    lengths = {len(v) for v in xs}
    if len(lengths) > 1:
        raise InputError(f"model '{model.name}': its inputs have different batch sizes "
                         f"{[len(v) for v in xs]}; every input needs one row per sample")
    return xs


def _prepare_one(model, x, input_layer, kind, reader, allow_nonfinite):
    where = f"model '{model.name}'" + (f" input '{input_layer.name}'" if len(model.input_layers) > 1 else "")
    if kind == "string":
        return np.asarray(reader.as_strings(x), dtype=object)
    try:
        arr = np.asarray(x)
    except ValueError as e:  # ragged nested lists
        raise InputError(f"{where}: input could not be converted to an array ({e}); "
                         "pass a rectangular numeric array") from None
    shape = input_layer.batch_shape if input_layer else None
    if shape is not None:
        if arr.ndim != len(shape):
            hint = ""
            if arr.ndim == len(shape) - 1:
                hint = " (a single sample? add a batch axis: x[None])"
            raise InputError(f"{where} expects input of rank {len(shape)} "
                             f"with shape (batch, {', '.join(str(s) for s in shape[1:])}), "
                             f"got shape {arr.shape}{hint}")
        for i, (want, got) in enumerate(zip(shape[1:], arr.shape[1:]), start=1):
            if want is not None and want != got:
                what = "channels" if (i == len(shape) - 1 and arr.ndim == 4) else f"axis {i}"
                raise InputError(f"{where} expects input shape (batch, "
                                 f"{', '.join(str(s) for s in shape[1:])}); got {arr.shape} "
                                 f"(wrong {what}: expected {want}, got {got})")
    if kind == "int":
        return arr  # id checks (dtype, range) are done by the Embedding layer
    if arr.dtype.kind not in "fiub":
        raise InputError(f"{where} expects a numeric float array, got dtype {arr.dtype}")
    # the input keeps its dtype here; each chunk is cast to the compute dtype when it
    # is processed (no full-size float64 copy of a large input)
    if not allow_nonfinite and arr.dtype.kind == "f":
        bad = first_nonfinite(arr)
        if bad is not None:
            raise InputError(f"{where}: input contains NaN/inf (first at index {bad}); clean the "
                             "data or call predict(..., allow_nonfinite=True) to propagate it")
    return arr


def as_compute(model, xs):
    """Input chunks in the compute dtype (ids and strings pass unchanged)."""
    return [np.asarray(x, dtype=model.dtype) if kind == "float" else x
            for x, kind in zip(xs, model.input_kinds)]
