"""Reading Keras model files (no TensorFlow, no pickle, no code execution).

* ``.keras`` (Keras 3): a zip with ``config.json`` (architecture), ``model.weights.h5``
  (variables under ``layers/<snake_case class name>[_k]/.../vars/<i>``, where the
  name is the layer *class* in snake case with a per-class counter in model order)
  and ``assets/`` (e.g. TextVectorization vocabularies, ``assets/<same path>/vocabulary.txt``).
* legacy ``.h5`` (``model.save("x.h5")``): root attr ``model_config`` (JSON) and a
  ``model_weights`` group with one sub-group per layer *name* whose attr
  ``weight_names`` lists its datasets in Keras weight order.
"""
import contextlib
import os
import re
import zipfile
from typing import NamedTuple

import h5py

from ..engine.graph import MODEL_CLASSES, build_graph
from ..engine.model import Model
from ..errors import ModelFileError, ScratchError, UnsupportedLayerError
from ..layers import operations
from ..layers.core import InputLayer
from ..layers.registry import REFUSED, REGISTRY
from ..layers.text import parse_vocabulary_file
from . import safety


def to_snake_case(name):
    """Same as keras/src/utils/naming.py::to_snake_case."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()
    return name


def _is_op(entry):
    """Functional configs contain nodes for keras.ops calls (``a + b``, ``keras.ops.relu``,
    the NotEqual that computes an Embedding mask): operations, not layers; no weights."""
    return str(entry.get("module") or "").startswith("keras.src.ops")


def _check_entries(entries, model_name):
    """Every layer entry must be a dict with a str class_name and a dict config, so the
    rest of the loader can use .get() on it without raw AttributeErrors."""
    for i, e in enumerate(entries):
        if not (isinstance(e, dict) and isinstance(e.get("class_name"), str)
                and isinstance(e.get("config") or {}, dict)):
            raise ModelFileError(f"model '{model_name}': layers[{i}] is not a layer entry "
                                 f"(a dict with 'class_name' and 'config'), got {str(e)[:80]!r}; "
                                 "the file was not written by Keras or is corrupt")


def _weight_paths(entries):
    """Path of each layer in model.weights.h5: snake_case(class) + per-class counter,
    counted over the model's layers in config order (ops excluded)."""
    used, paths = {}, {}
    for e in entries:
        if _is_op(e):
            continue
        cls = e.get("class_name", "")
        # Keras names the group after the layer's Python class, which a few export names
        # differ from (GroupQueryAttention is class GroupedQueryAttention)
        base = to_snake_case(getattr(REGISTRY.get(cls), "python_class_name", None) or cls)
        if base in used:
            used[base] += 1
            base = f"{base}_{used[base]}"
        else:
            used[base] = 0
        paths[id(e)] = base
    return paths


def _collect_vars(group, where, depth=0):
    """Weight *datasets* (not yet read) of a layer group in Keras order: own vars, then
    sub-objects (forward_layer before backward_layer, then the rest alphabetically)."""
    if depth > safety.MAX_JSON_DEPTH:
        raise ModelFileError(f"{where}: weight groups nested too deep")
    out = []
    if "vars" in group:
        v = safety.hard_child(group, "vars", where)
        keys = sorted(v.keys(), key=lambda k: int(k) if k.isdigit() else -1)
        out.extend(safety.hard_child(v, k, where) for k in keys)
    keys = [k for k in group.keys() if k != "vars"]
    pri = {"forward_layer": 0, "backward_layer": 1, "cell": 2}
    for k in sorted(keys, key=lambda k: (pri.get(k, 9), k)):
        child = safety.hard_child(group, k, where)
        if isinstance(child, h5py.Group):
            out.extend(_collect_vars(child, where, depth + 1))
    return out


class _Blueprint(NamedTuple):
    """A layer entry, looked up: its constructor, config and class name, the blueprints of
    the layers it wraps, and the shapes of all its weights (wrapped layers' included)."""
    ctor: type
    config: dict
    class_name: str
    wrapped: list
    weight_shapes: list


def _constructor(cls, name, owner=None):
    """The registry's constructor for class ``cls``, or a clear refusal."""
    where = f"{owner}: " if owner else ""
    if cls in REFUSED:
        raise UnsupportedLayerError(f"{where}layer '{name}' of class {cls}: {REFUSED[cls]}")
    ctor = REGISTRY.get(cls)
    if ctor is None:
        raise UnsupportedLayerError(f"{where}layer '{name}': unsupported layer class '{cls}'. "
                                    f"Supported: {', '.join(sorted(REGISTRY))}")
    return ctor


def _blueprint(entry, owner=None):
    """Look a layer entry up; a wrapper's wrapped layers are looked up here like any other
    (as Keras' ``Wrapper.from_config`` deserializes them), so no layer reads the registry."""
    cls = entry.get("class_name")
    cfg = entry.get("config") or {}
    name = cfg.get("name", entry.get("name", "?"))
    ctor = _constructor(cls, name, owner)
    if not hasattr(ctor, "wrapped_entries"):
        return _Blueprint(ctor, cfg, cls, [], ctor.weight_shapes(cfg))
    wrapped = []
    for sub in ctor.wrapped_entries(cfg):
        bp = _blueprint(sub, f"{cls} layer '{name}'")
        ctor.check_wrapped(cfg, bp.class_name, bp.ctor)
        wrapped.append(bp)
    return _Blueprint(ctor, cfg, cls, wrapped, [s for bp in wrapped for s in bp.weight_shapes])


def _construct(bp, weights, vocabulary=None):
    """The layer of a blueprint on its weights (each wrapped layer on its slice, in order)."""
    if getattr(bp.ctor, "reads_vocabulary", False):  # TextVectorization, String/IntegerLookup
        return bp.ctor(bp.config, weights, bp.class_name, vocabulary=vocabulary)
    if not hasattr(bp.ctor, "wrapped_entries"):
        return bp.ctor(bp.config, weights, bp.class_name)
    inner, i = [], 0
    for sub in bp.wrapped:
        n = len(sub.weight_shapes)
        inner.append(_construct(sub, weights[i:i + n]))
        i += n
    return bp.ctor(bp.config, weights, bp.class_name, wrapped=inner)


def _build_layer(entry, datasets, vocabulary=None, keras_ordered=False):
    """Check the weight datasets against the config, then read them and build the layer.
    Any raw error from a malformed config becomes a ModelFileError naming the layer."""
    cfg = entry.get("config") or {}
    where = f"layer '{cfg.get('name', entry.get('name', '?'))}' ({entry.get('class_name')})"
    with _config_errors(where):
        bp = _blueprint(entry)
        if keras_ordered and hasattr(bp.ctor, "keras_order_of"):
            # a legacy .h5 lists a layer's weights in Keras' order; the constructor takes
            # the .keras file's (sub-layers alphabetically)
            order = bp.ctor.keras_order_of(cfg)
            if len(order) == len(datasets):
                loader = [None] * len(order)
                for j, i in enumerate(order):
                    loader[i] = datasets[j]
                datasets = loader
        safety.check_weights(where, datasets, bp.weight_shapes)
        layer = _construct(bp, safety.read_weights(where, datasets), vocabulary)
        layer.weight_paths = [d.name for d in datasets]  # where Model.save writes them back
        return layer


@contextlib.contextmanager
def _config_errors(where):
    """Turn the raw exceptions a malformed config provokes into a ModelFileError."""
    try:
        yield
    except ScratchError:
        raise
    except KeyError as e:
        raise ModelFileError(f"{where}: config is missing {e}; the file was not written by "
                             "Keras or is corrupt") from None
    except (TypeError, ValueError, AttributeError, IndexError, OverflowError, RecursionError) as e:
        raise ModelFileError(f"{where}: malformed config ({type(e).__name__}: {str(e)[:200]}); "
                             "the file was not written by Keras or is corrupt") from None


def _layer_maker(model_cfg, get_weights, get_vocab, prefix="", owner=()):
    """``make_layer(entry, index, depth)`` for the layers of one (possibly nested) model:
    builds a layer with its weights, or a nested model's Graph. A nested model's weights
    live under ``layers/<its path>/layers/...`` (.keras) or in the group of the top nested
    model (legacy .h5, see :func:`_legacy_weights`)."""
    cfg = model_cfg.get("config") or {}
    entries = cfg.get("layers") or []
    _check_entries(entries, cfg.get("name", model_cfg.get("class_name")))
    paths = _weight_paths(entries)

    def make_layer(entry, index, depth):
        path = prefix + paths.get(id(entry), "")
        name = (entry.get("config") or {}).get("name", entry.get("name"))
        if entry.get("class_name") in MODEL_CLASSES:
            sub = _layer_maker(entry, get_weights, get_vocab, path + "/layers/", tuple(owner) + (name,))
            return build_graph(entry, sub, _make_input, depth + 1)
        if _is_op(entry):
            return _build_op(entry)
        if entry.get("module") is None and entry.get("class_name") not in REGISTRY \
                and entry.get("class_name") in operations.OPS:
            raise UnsupportedLayerError(
                f"'{name}' is the operation {entry.get('class_name')} (an expression such as a + b "
                "or keras.ops.* in the model) in a legacy .h5 file, which does not record that it "
                "is an operation (Keras cannot load it either); save the model as .keras")
        weights = get_weights(entry, path, list(owner))
        reads = getattr(REGISTRY.get(entry.get("class_name")), "reads_vocabulary", False)
        vocab = get_vocab(entry, path) if reads else None
        return _build_layer(entry, weights, vocab, keras_ordered=getattr(get_weights, "keras_ordered", False))
    return make_layer


def _build_op(entry):
    """An operation node (``keras.src.ops``): looked up by class name in ``ops.OPS``; never
    evaluated from the config."""
    cls = entry.get("class_name")
    name = (entry.get("config") or {}).get("name", entry.get("name", "?"))
    ctor = operations.OPS.get(cls)
    if ctor is None:
        raise UnsupportedLayerError(f"operation '{name}': unsupported operation '{cls}' "
                                    f"({entry.get('module')}). Supported: {', '.join(sorted(operations.OPS))}")
    with _config_errors(f"operation '{name}' ({cls})"):
        return ctor(entry.get("config") or {}, [], cls)


def _make_input(config):
    with _config_errors("InputLayer"):
        return InputLayer(config, [], "InputLayer")


def _assemble(model_cfg, get_weights, get_vocab):
    if not isinstance(model_cfg, dict) or "class_name" not in model_cfg:
        raise ModelFileError("model config is not a Keras model config (no class_name)")
    if model_cfg["class_name"] not in MODEL_CLASSES:
        # a bare layer saved as a model is not a model
        raise UnsupportedLayerError(f"top-level object is a '{model_cfg['class_name']}', "
                                    "not a Sequential/Functional model")
    graph = build_graph(model_cfg, _layer_maker(model_cfg, get_weights, get_vocab), _make_input)
    model = Model((model_cfg.get("config") or {}).get("name", "model"), graph)
    model.check_layers_fit()
    return model


def _load_keras_zip(path):
    """Read only what is needed, streamed and capped (see :mod:`scratch_layers.safety`):
    config.json, model.weights.h5 (to a temporary file) and, on demand, the vocabulary
    of each layer that reads one (TextVectorization, StringLookup, IntegerLookup). Other
    assets are never inflated."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated .keras file ({type(e).__name__}: {e})") from None
    with zf, _zip_errors(path):
        names = set(zf.namelist())
        if "config.json" not in names:
            raise ModelFileError(f"{path}: not a Keras 3 .keras archive (no config.json)")
        model_cfg = safety.load_json(
            safety.read_member(zf, "config.json", safety.CONFIG_MAX_BYTES, path), f"{path}: config.json")
        if "model.weights.h5" not in names:
            raise ModelFileError(f"{path}: archive has no model.weights.h5 (only the h5 "
                                 "weights format is supported)")
        with safety.extract_member(zf, "model.weights.h5", safety.WEIGHTS_MAX_BYTES, path) as wfile:
            try:
                h5 = h5py.File(wfile, "r")
            except OSError as e:
                raise ModelFileError(f"{path}: model.weights.h5 inside the archive is corrupt ({e})") from None
            with h5:
                return _assemble(model_cfg, _keras_weights(h5, path), _keras_vocab(zf, names, path))


@contextlib.contextmanager
def _zip_errors(path):
    """zipfile's errors while members are streamed (bad CRC, truncation) are file errors."""
    try:
        yield
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as e:
        raise ModelFileError(f"{path}: corrupt or truncated .keras file ({type(e).__name__}: {e})") from None


def _keras_weights(h5, path):
    """get_weights for a .keras file: the datasets under ``layers/<path>``."""
    def get_weights(entry, p, owner):
        grp = safety.hard_path(h5, f"layers/{p}", path) if p else None
        if grp is None:
            return []
        try:
            return _collect_vars(grp, f"{path}: layer path '{p}'")
        except (OSError, KeyError, ValueError) as e:
            if isinstance(e, ScratchError):
                raise
            raise ModelFileError(f"{path}: cannot read weights of layer path '{p}' ({e})") from None
    return get_weights


def _keras_vocab(zf, names, path):
    """get_vocab for a .keras file: reads the layer's vocabulary.txt only when asked."""
    def get_vocab(entry, p):
        for cand in (f"assets/layers/{p}/vocabulary.txt",
                     f"assets/layers/{p}/_lookup_layer/vocabulary.txt"):
            if cand in names:
                data = safety.read_member(zf, cand, safety.VOCABULARY_MAX_BYTES, path)
                return parse_vocabulary_file(data, f"{path}: {cand}")
        return None
    return get_vocab


def _attr_list(group, name):
    """h5 attribute list, possibly chunked as name0, name1, ... (Keras legacy format)."""
    if name in group.attrs:
        vals = list(group.attrs[name])
    else:
        vals, i = [], 0
        while f"{name}{i}" in group.attrs:
            vals.extend(group.attrs[f"{name}{i}"])
            i += 1
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in vals]


def _load_legacy_h5(path):
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ModelFileError(f"{path}: corrupt or truncated HDF5 file ({e})") from None
    with f:
        if "model_config" not in f.attrs:
            raise ModelFileError(f"{path}: HDF5 file has no 'model_config' attribute (a weights-only "
                                 "file?); save the full model with model.save()")
        model_cfg = safety.read_config_attribute(f, "model_config", path)
        mw = f.get("model_weights")
        if mw is None:
            raise ModelFileError(f"{path}: no 'model_weights' group")
        outer = (model_cfg.get("config") or {}).get("name") if isinstance(model_cfg, dict) else None
        return _assemble(model_cfg, _legacy_weights(mw, path, outer), lambda e, p: None)


def _legacy_weights(mw, path, outer):
    """get_weights for a legacy .h5: the datasets listed in the group's ``weight_names``.

    A layer of a nested model keeps its weights in the group of the top nested model,
    under ``<nested names>/<layer name>/``; Keras 3.15 prefixes those names with the
    outer model's name (``outer/inner/dense/kernel``), older versions do not."""
    def get_weights(entry, p, owner):
        name = (entry.get("config") or {}).get("name", entry.get("name"))
        grp = safety.hard_path(mw, owner[0] if owner else name, path)
        if grp is None:
            return []
        names = _attr_list(grp, "weight_names")
        if owner:
            # a nested Sequential's weights are named outer/inner/layer/..., a nested
            # Functional's layer/... : try the longest owner path first
            stripped = [_without_prefix(w, outer) for w in names]
            for i in range(len(owner) + 1):
                want = "/".join(owner[i:] + [name]) + "/"
                picked = [w for w, b in zip(names, stripped) if b.startswith(want)]
                if picked:
                    break
            names = picked
        try:
            return [safety.hard_path(grp, w, path) for w in names]
        except (OSError, KeyError, ValueError) as e:
            raise ModelFileError(f"{path}: cannot read weights of layer '{name}' ({e})") from None
    get_weights.keras_ordered = True
    return get_weights


def _without_prefix(weight_name, outer):
    return weight_name[len(outer) + 1:] if outer and weight_name.startswith(outer + "/") else weight_name


def load_model(path, dtype="float64"):
    """Load a Keras 3 ``.keras`` file or a legacy full-model ``.h5`` file.

    ``dtype``: the compute precision. "float64" (default) is the exact reference, equal
    to Keras' own maths in float64; "float32" computes like Keras itself, faster."""
    if str(dtype) not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    model = _load(path)
    model.source = {"path": os.path.abspath(os.fspath(path)), "format": _format_of(path)}
    return model if str(dtype) == "float64" else model.astype(dtype)


def _load(path):
    """Dispatch on the file's magic bytes. No raw error from a malformed config escapes."""
    path = os.fspath(path)
    with _config_errors(f"{path}: model config"):
        return _dispatch(path)


def _format_of(path):
    with open(path, "rb") as fh:
        return "h5" if fh.read(8) == b"\x89HDF\r\n\x1a\n" else "keras"


def _dispatch(path):
    if not os.path.exists(path):
        raise ModelFileError(f"model file not found: {path}")
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a directory (a TF SavedModel?); expected a .keras or .h5 file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head[:4] == b"PK\x03\x04" or zipfile.is_zipfile(path):
        return _load_keras_zip(path)
    if head == b"\x89HDF\r\n\x1a\n":
        return _load_legacy_h5(path)
    if len(head) == 0:
        raise ModelFileError(f"{path}: file is empty")
    raise ModelFileError(f"{path}: not a Keras model file (expected a .keras zip archive or a "
                         "legacy .h5 HDF5 file)")
