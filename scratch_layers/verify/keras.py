"""Check a model file against Keras itself: scratch vs Keras float32 vs Keras' float64 twin.

This module is the one place that imports Keras (lazily, inside the functions), so
``import scratch_layers`` stays TensorFlow-free.  It is what
``python -m scratch_layers verify MODEL`` runs, and what the study verification uses.

* The *float64 twin* (:func:`float64_twin`) is the same architecture with float64
  dtype policies and the same weights cast to float64: Keras' own maths without
  float32 rounding.  Scratch (float64) must equal it to ``TWIN_ATOL``; against the
  float32 model the tolerance is ``ATOL``/``RTOL``.  A layer that matches the twin but
  not the float32 model is Keras' rounding; one that misses the twin is a scratch error.
"""
from __future__ import annotations

import numpy as np

from ..layers.core import Embedding
from ..layers.text import TextVectorization

ATOL = 1e-5
RTOL = 1e-5
TWIN_ATOL = 1e-9
KERAS_BATCH = 256


def _float64_config(obj):
    """The model config with every float32 dtype (policies and tensor specs) made float64."""
    if isinstance(obj, dict):
        out = {k: _float64_config(v) for k, v in obj.items()}
        if out.get("dtype") == "float32":
            out["dtype"] = "float64"
        if out.get("class_name") == "DTypePolicy" and out.get("config", {}).get("name") == "float32":
            out["config"] = {**out["config"], "name": "float64"}
        return out
    if isinstance(obj, list):
        return [_float64_config(v) for v in obj]
    return obj


def float64_twin(keras_model):
    """Keras' own maths in float64: the same architecture with float64 dtype policies and
    the same weights cast to float64 (TextVectorization vocabularies copied over)."""
    import keras

    # the global policy too: a nested Sequential's from_config drops its own dtype
    old_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float64")
    try:
        twin = type(keras_model).from_config(_float64_config(keras_model.get_config()))
    finally:
        keras.config.set_dtype_policy(old_policy)
    twin.set_weights([w.astype(np.float64) if w.dtype == np.float32 else w
                      for w in keras_model.get_weights()])
    for src, dst in zip(keras_model.layers, twin.layers):
        if isinstance(src, keras.layers.TextVectorization):
            dst.set_vocabulary(src.get_vocabulary())
        if isinstance(src, (keras.layers.StringLookup, keras.layers.IntegerLookup)) and \
                src.input_vocabulary is None and src.output_mode != "tf_idf":
            dst.set_vocabulary(src.get_vocabulary())  # an adapted vocabulary is not in the config
        if isinstance(dst, keras.layers.Normalization):
            dst.finalize_state()  # it caches its statistics; set_weights does not refresh them
    return twin


def as_float64(x):
    return x.astype(np.float64) if getattr(x, "dtype", None) == np.float32 else x


def _graph_of(keras_model):
    """The Functional graph of a model (a built Sequential keeps one in ``_functional``)."""
    return getattr(keras_model, "_functional", None) or keras_model


def keras_node_outputs(keras_model):
    """``[(name, KerasTensor)]``: the output of every call of a layer or operation in the
    model's graph, named as :meth:`scratch_layers.Model.intermediate_outputs` names them
    (``layer``, ``layer:1`` for its second call in this model, a nested model's call by the
    nested model's name; the further outputs of a call with several, ``layer[1]``, ...)."""
    import keras

    keras_model = _graph_of(keras_model)
    own = getattr(keras_model, "_nodes", None)
    out = []
    for op in keras_model.operations:
        if isinstance(op, keras.layers.InputLayer):
            continue
        pos = 0
        for index, node in enumerate(op._inbound_nodes):
            if own is not None and f"{id(op)}_ib-{index}" not in own:
                continue
            name = op.name if pos == 0 else f"{op.name}:{pos}"
            # a call with several outputs (an RNN's return_state): ``name``, ``name[1]``, ...
            for j, tensor in enumerate(node.outputs):
                out.append((name if j == 0 else f"{name}[{j}]", tensor))
            pos += 1
    return out


def keras_intermediate_outputs(keras_model, x) -> dict[str, np.ndarray]:
    """Output of every node (non-input layer or operation call) of a Keras model, by the
    names :func:`keras_node_outputs` gives."""
    import keras

    named = keras_node_outputs(keras_model)
    if not named:
        return {}
    probe = keras.Model(_graph_of(keras_model).inputs, [t for _, t in named])
    outs = probe.predict(x, batch_size=KERAS_BATCH, verbose=0)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    return {name: np.asarray(o) for (name, _), o in zip(named, outs)}


def max_abs_diff(a, b) -> float | None:
    """max |a - b| in float64; None when either is missing or the shapes differ."""
    if a is None or b is None or np.shape(a) != np.shape(b):
        return None
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a64 - b64).max()) if a64.size else 0.0


def twin_tolerance(twin_output) -> float:
    """``TWIN_ATOL`` relative to the output's scale (at least 1): a node whose values
    reach 1e3 rounds at ~1e-13 in float64, and its tolerance grows with it."""
    if twin_output is None or not np.size(twin_output):
        return TWIN_ATOL
    scale = float(np.max(np.abs(np.asarray(twin_output, np.float64))))
    return TWIN_ATOL * max(1.0, scale if np.isfinite(scale) else 1.0)


def backend_node_outputs(model, x, keras_model) -> dict:
    """``model.intermediate_outputs(x)``; for a backend without it (see
    :mod:`scratch_layers.verify.backends`), its ``predict(x)`` under the name of the Keras
    node(s) that produce the model's output(s)."""
    if callable(getattr(model, "intermediate_outputs", None)):
        return model.intermediate_outputs(x)
    out = model.predict(x)
    outs = list(out.values()) if isinstance(out, dict) else list(out) if isinstance(out, (list, tuple)) else [out]
    ends = [id(t) for t in _graph_of(keras_model).outputs]
    named = {id(t): name for name, t in keras_node_outputs(keras_model)}
    return {named[e]: o for e, o in zip(ends, outs) if e in named}


def _node_classes(model, keras_model) -> dict:
    """Node name -> class: scratch_layers' own, else the Keras operation's."""
    graph = getattr(model, "graph", None)
    if graph is not None and hasattr(graph, "nodes"):
        return {n.name: n.layer.class_name for n in graph.nodes}
    return {name: type(t._keras_history[0]).__name__ for name, t in keras_node_outputs(keras_model)}


def layer_divergence(keras_model, scratch_model, x, precision: str = "float64") -> list[dict]:
    """Per-node table on ``x``, in the order the nodes run: name, class, output shape,
    max |scratch - Keras| with its allclose, and max |scratch - float64 twin| with its
    pass (:func:`twin_tolerance`). Nodes inside a nested model have no Keras output
    (Keras runs the nested model as one call): their Keras columns are None.
    ``scratch_model`` may be any backend's model (:func:`backend_node_outputs`); for a
    float32 one (``precision``) the twin column is reported and ``twin_ok`` is None."""
    kout = keras_intermediate_outputs(keras_model, x)
    try:
        tout = keras_intermediate_outputs(float64_twin(keras_model), as_float64(x))
    except Exception:  # noqa: BLE001 - TF has no float64 kernel for some ops (MaxPool3D,
        tout = {}      # AvgPool3D): no twin, its column is n/a and not gated
    sout = backend_node_outputs(scratch_model, x, keras_model)
    classes = _node_classes(scratch_model, keras_model)
    rows = []
    for name, s in sout.items():
        k, t = kout.get(name), tout.get(name)
        d, d64 = max_abs_diff(s, k), max_abs_diff(s, t)
        rows.append({
            "layer": name, "class": classes.get(name, "Model"),
            "shape": list(np.shape(s)[1:]),
            "max_abs_diff": d,
            "allclose": None if d is None else bool(np.allclose(np.asarray(s, np.float64),
                                                                np.asarray(k, np.float64), atol=ATOL, rtol=RTOL)),
            "max_abs_diff_float64": d64,
            "twin_ok": None if d64 is None or precision == "float32" else bool(d64 <= twin_tolerance(t))})
    return rows


def first_failing(rows):
    """The first row (in run order) that misses the float64 twin, else the first that
    misses float32 Keras; None when every node matches."""
    return next((r for r in rows if r["twin_ok"] is False), None) or \
        next((r for r in rows if r["allclose"] is False), None)


def generated_inputs(scratch_model, n: int = 32, seed: int = 0):
    """Inputs that fit each of the model's inputs: floats for images and other float
    inputs, ids in the reading Embedding's range with padding for id inputs, strings drawn
    from the vocabulary (plus an unknown word) for text inputs. One array for a
    single-input model, else a list in input order."""
    rng = np.random.default_rng(seed)
    xs = [_generated_input(scratch_model, layer, t, kind, n, rng)
          for layer, t, kind in zip(scratch_model.input_layers, scratch_model.graph.inputs,
                                    scratch_model.input_kinds)]
    return xs[0] if len(xs) == 1 else xs


def _generated_input(scratch_model, input_layer, tensor, kind, n, rng):
    readers = [node.layer for node in scratch_model.graph.nodes if tensor in node.inputs]
    shape = tuple(input_layer.batch_shape or (None,))[1:]
    if any(d is None for d in shape) and kind != "string":
        shape = tuple(d if d is not None else 16 for d in shape)
    if kind == "string":
        vec = next((l for l in readers if isinstance(l, TextVectorization)), None)
        words = (vec.vocabulary[2:] if vec is not None else []) or ["a"]
        lengths = rng.integers(1, 24, n)
        texts = [" ".join(rng.choice(words, k)) for k in lengths]
        texts[0] += " zzqxunknownword"
        return np.asarray(texts, dtype=object)
    if kind == "int":
        emb = next((l for l in readers if isinstance(l, Embedding)), None)
        vocab = emb.input_dim if emb is not None else 8
        ids = rng.integers(1, vocab, (n, *shape))
        if ids.ndim == 2 and ids.shape[1] > 1:  # post-padding of random length
            lengths = rng.integers(1, ids.shape[1] + 1, n)
            ids[np.arange(ids.shape[1])[None, :] >= lengths[:, None]] = 0
        return ids.astype(np.int64)
    return rng.normal(0.5, 0.5, (n, *shape)).astype(np.float32)


def load_input(path: str):
    """``.npy`` (allow_pickle=False) or ``.txt`` (one text per line)."""
    if path.endswith(".txt"):
        with open(path, encoding="utf-8", errors="replace") as f:
            return np.asarray([line.rstrip("\n") for line in f], dtype=object)
    return np.load(path, allow_pickle=False)
