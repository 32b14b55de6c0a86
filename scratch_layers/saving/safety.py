"""Defences against hostile or broken model files: size caps, streamed zip reads,
JSON depth limits and HDF5 weight checks made *before* any weight data is read.

A model file is untrusted input. Everything here turns a zip bomb, a lying zip
header, an encrypted or oddly compressed member, a pathologically nested config or a
weight dataset that declares more data than the file holds into a
:class:`~scratch_layers.errors.ModelFileError` that says what is wrong, instead of an
out-of-memory kill or a raw Python exception.
"""
import json
import tempfile
import zipfile

import h5py
import numpy as np

from ..errors import ModelFileError

MiB = 2 ** 20
GiB = 2 ** 30
# Caps on what one .keras member may inflate to. Generous: real files are far smaller.
CONFIG_MAX_BYTES = 64 * MiB          # config.json (and a legacy .h5's model_config attribute)
VOCABULARY_MAX_BYTES = 256 * MiB     # one assets/.../vocabulary.txt
WEIGHTS_MAX_BYTES = 16 * GiB         # model.weights.h5 (streamed to a temporary file)
# A compressed zip member or HDF5 dataset may hold at most this many times its stored
# size. Keras stores both uncompressed; float weights compress by less than 2x.
MAX_INFLATE_RATIO = 100
MAX_JSON_DEPTH = 100                 # real Keras configs nest about 15 levels
_BLOCK = MiB                         # streaming block
_SPOOL_BYTES = 64 * MiB              # weights smaller than this stay in memory
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_H5_FILTERS = {"gzip", "lzf", "shuffle", "fletcher32", "szip", "scaleoffset"}


# ---------------------------------------------------------------------------- zip
def _member_info(zf, name, cap, where):
    """The member's ZipInfo, refused before reading when it is encrypted, compressed
    with an unknown method or declares more than ``cap`` (or ``MAX_INFLATE_RATIO`` x
    its stored size) uncompressed bytes."""
    info = zf.getinfo(name)
    if info.flag_bits & 0x1:
        raise ModelFileError(f"{where}: member '{name}' is encrypted; Keras never encrypts "
                             "model files. Re-save the model with model.save().")
    if info.compress_type not in _ZIP_METHODS:
        raise ModelFileError(f"{where}: member '{name}' uses unknown zip compression method "
                             f"{info.compress_type}; re-save the model with model.save().")
    limit = _inflate_limit(info, cap)
    if info.file_size > limit:
        raise ModelFileError(f"{where}: member '{name}' declares {info.file_size} bytes "
                             f"uncompressed, over the {_why(info, cap)}; the file is a zip "
                             "bomb or corrupt. Re-save the model with model.save().")
    return info, limit


def _inflate_limit(info, cap):
    if info.compress_type == zipfile.ZIP_STORED:
        return min(cap, info.compress_size)
    return min(cap, max(MiB, MAX_INFLATE_RATIO * info.compress_size))


def _why(info, cap):
    if _inflate_limit(info, cap) == cap:
        return f"cap of {cap} bytes for this member"
    return f"limit of {MAX_INFLATE_RATIO}x its stored size ({info.compress_size} bytes)"


def _stream(zf, name, cap, where, sink):
    """Copy one member into ``sink`` block by block, stopping as soon as more bytes come
    out than the header declared or than the cap allows (a lying header)."""
    info, limit = _member_info(zf, name, cap, where)
    limit = min(limit, info.file_size)
    total = 0
    try:
        with zf.open(info) as fh:
            while block := fh.read(_BLOCK):
                total += len(block)
                if total > limit:
                    raise ModelFileError(f"{where}: member '{name}' inflates past its declared "
                                         f"size ({info.file_size} bytes); the zip header lies. "
                                         "The file is hostile or corrupt.")
                sink(block)
    except (NotImplementedError, RuntimeError) as e:  # zipfile: unknown method / encrypted
        raise ModelFileError(f"{where}: cannot read member '{name}' ({e}); re-save the "
                             "model with model.save().") from None
    return total


def read_member(zf, name, cap, where):
    """The whole member as bytes (only for small members: config, vocabularies)."""
    parts = []
    _stream(zf, name, cap, where, parts.append)
    return b"".join(parts)


def extract_member(zf, name, cap, where):
    """The member as a seekable temporary file (kept in memory below 64 MiB, on disk
    above), so a large weights file never needs a second in-memory copy."""
    out = tempfile.SpooledTemporaryFile(max_size=_SPOOL_BYTES)
    try:
        _stream(zf, name, cap, where, out.write)
    except BaseException:
        out.close()
        raise
    out.seek(0)
    return out


# ---------------------------------------------------------------------------- json
def load_json(data, what):
    """Parse a model config; nesting deeper than MAX_JSON_DEPTH is refused."""
    try:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ModelFileError(f"{what} is not valid JSON ({type(e).__name__}: "
                             f"{str(e)[:200]}); the file is corrupt or was not written by Keras") from None
    check_depth(obj, what)
    return obj


def check_depth(obj, what, limit=MAX_JSON_DEPTH):
    """Iterative depth check: later recursive walks of the config cannot overflow."""
    stack = [(obj, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise ModelFileError(f"{what} is nested more than {limit} levels deep; Keras "
                                 "configs are far shallower, so the file is hostile or corrupt")
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))


def read_config_attribute(obj, name, where):
    """A JSON config stored as an HDF5 attribute, capped at CONFIG_MAX_BYTES. HDF5
    attributes are never compressed, so reading one costs at most the file's size; a
    fixed-size one is measured before reading, a variable-length string just after."""
    size = h5py.h5a.open(obj.id, name.encode()).get_storage_size()
    raw = obj.attrs[name] if size <= CONFIG_MAX_BYTES else b""
    if size > CONFIG_MAX_BYTES or len(raw) > CONFIG_MAX_BYTES:
        raise ModelFileError(f"{where}: attribute '{name}' holds {max(size, len(raw))} bytes, over "
                             f"the cap of {CONFIG_MAX_BYTES}; the file is hostile or corrupt")
    return load_json(raw, f"{where}: {name}")


# ---------------------------------------------------------------------------- h5
def hard_child(group, key, where):
    """``group[key]`` when it is a hard link; soft/external links are refused (an
    external link could pull in another file from the disk, a soft link can loop)."""
    link = group.get(key, getlink=True)
    if not isinstance(link, h5py.HardLink):
        raise ModelFileError(f"{where}: '{group.name}/{key}' is a {type(link).__name__}; Keras "
                             "weight files hold only plain groups and datasets")
    return group[key]


def hard_path(group, path, where):
    """``group[path]`` for a '/'-separated path, every step a hard link (see hard_child)."""
    node = group
    for key in path.strip("/").split("/"):
        if not isinstance(node, h5py.Group) or key not in node:
            return None
        node = hard_child(node, key, where)
    return node


def check_weights(where, datasets, expected):
    """Check count, dtype, shape and stored size of a layer's weight datasets against
    what its config implies, reading no data.

    ``expected``: one shape per weight; a dimension may be an int, a str symbol (every
    occurrence must be equal, e.g. the input width) or the whole shape may be None
    (any shape)."""
    if len(datasets) != len(expected):
        raise ModelFileError(f"{where}: the config implies {len(expected)} weight arrays, "
                             f"the file holds {len(datasets)}")
    symbols = {}
    for i, (ds, want) in enumerate(zip(datasets, expected)):
        _check_dataset(f"{where}: weight {i}", ds)
        if want is not None and not _shape_fits(tuple(ds.shape), want, symbols):
            shown = "(" + ", ".join("?" if isinstance(d, str) else str(d) for d in want) + \
                    ("," if len(want) == 1 else "") + ")"
            raise ModelFileError(f"{where}: weight {i} has shape {tuple(ds.shape)}, the config "
                                 f"implies {shown}; the weights do not belong to this config")


def _shape_fits(shape, want, symbols):
    if len(shape) != len(want):
        return False
    for got, w in zip(shape, want):
        if isinstance(w, str):
            if symbols.setdefault(w, got) != got:
                return False
        elif got != w:
            return False
    return True


def _check_dataset(where, ds):
    """A float dataset whose declared bytes fit what is stored (raw, or compressed with
    a known filter at most MAX_INFLATE_RATIO x), with no external or virtual storage."""
    if not isinstance(ds, h5py.Dataset):
        raise ModelFileError(f"{where} is not an HDF5 dataset")
    if ds.dtype.kind in "iu" and ds.shape == ():
        return  # a counter such as an adapted Normalization's ``count``
    if ds.dtype.kind != "f" or ds.dtype.itemsize not in (2, 4, 8):
        raise ModelFileError(f"{where} has dtype {ds.dtype}; weights must be float16/32/64")
    if ds.external or ds.is_virtual:
        raise ModelFileError(f"{where} stores its data outside the file; refused")
    declared = int(np.prod(ds.shape, dtype=np.int64)) * ds.dtype.itemsize
    stored = ds.id.get_storage_size()
    filters = set(ds._filters) if ds.chunks else set()
    unknown = filters - _H5_FILTERS
    if unknown:
        raise ModelFileError(f"{where} uses unknown HDF5 filters {sorted(unknown)}")
    ratio = MAX_INFLATE_RATIO if filters - {"fletcher32", "shuffle"} else 1
    if declared > stored * ratio:
        raise ModelFileError(f"{where} declares {declared} bytes of shape {ds.shape} but the "
                             f"file stores only {stored} bytes for it; the file is hostile or "
                             "truncated")


def read_weights(where, datasets):
    """Read checked datasets as float64 arrays."""
    try:
        return [np.asarray(ds, dtype=np.float64) for ds in datasets]
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise ModelFileError(f"{where}: cannot read weights ({e})") from None
