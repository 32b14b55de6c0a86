"""The graph of a Keras model: its nodes in topological order, read from a model config.

A *node* is one call of a layer (or of a ``keras.src.ops`` operation): its inputs are
tensor ids, its output one tensor id (a tuple of arrays for a call with several outputs,
read by one :class:`OutputItem` node per output). A layer called several times (a shared layer) is
one :class:`~scratch_layers.layers.layer.Layer` object referenced by several nodes, so it keeps
one set of weights. A Sequential or Functional model used as a layer is built once as
its own :class:`Graph` and *instantiated* at each of its calls: its nodes are copied
with fresh tensor ids (sharing the layer objects). A Sequential model is a graph with
one path; there is no separate linear code path.

Config format (Keras 3, also in legacy ``.h5``): each layer entry has ``inbound_nodes``,
one per call, ``{"args": [...], "kwargs": {...}}``, where a tensor is
``{"class_name": "__keras_tensor__", "config": {"keras_history": [layer, node_index,
tensor_index]}}``; ``input_layers``/``output_layers`` are ``[name, 0, 0]``, a list of
them, or a dict keyed by the model's input/output names. Nothing is evaluated: the
config is data only.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from ..errors import ModelFileError, UnsupportedLayerError
from ..layers.layer import Layer, TensorRef, is_tensor

MODEL_CLASSES = ("Sequential", "Functional", "Model")
MAX_NESTING = 8            # models inside models
MAX_CALL_INPUTS = 100_000  # tensors one call may read (a hostile fan-in is refused)
MAX_NODES = 1_000_000      # nodes of one model, nested models expanded


@dataclass
class Node:
    """One call of ``layer``: reads tensors ``inputs`` (ids; None for an absent optional
    input), writes tensor ``output``. ``name`` is the layer's name, with ``:k`` for its
    k-th call (Keras' node index) and ``outer/`` for a layer inside a nested model."""
    layer: object
    inputs: list
    output: int
    name: str
    options: dict = field(default_factory=dict)


class OutputItem(Layer):
    """Output ``index`` of a layer call with several outputs (an RNN with ``return_state``:
    the output, then the states). Such a call writes one tensor holding the tuple of its
    outputs (and a tuple of masks); one OutputItem node per output reads it, and the
    config's ``[layer, node_index, tensor_index]`` references name these. Internal: not a
    layer of the model; ``intermediate_outputs`` names the outputs ``layer``, ``layer[1]``,
    ... (as Keras' per-node probe does). Backward: the tuple's gradient is an
    :class:`OutputGrads` with ``dy`` at ``index`` (None elsewhere); they add up."""

    hidden = True

    def __init__(self, index, owner):
        # named and classed after the call it picks from (verify's table shows the layer)
        super().__init__({"name": f"{owner.name}[{index}]"}, [], owner.class_name)
        self.index = index

    def forward(self, x, mask=None):
        return x[self.index]

    def compute_mask(self, x, mask):
        return mask[self.index] if isinstance(mask, (tuple, list)) else None

    def forward_train(self, x, mask, ctx):
        self._n = len(x)
        return x[self.index]

    def backward(self, dy, need_dx=True):
        grads = OutputGrads([None] * self._n)
        grads[self.index] = dy
        return grads, []


class OutputGrads(list):
    """The gradient of a several-output call: one array (or None: that output is not used)
    per output; ``+`` adds them output by output (a fan-out of the tuple)."""

    def __add__(self, other):
        return OutputGrads(a if b is None else (b if a is None else a + b) for a, b in zip(self, other))


def n_outputs(layer):
    """How many outputs a call of ``layer`` gives (``Layer.n_outputs``, default 1)."""
    return int(getattr(layer, "n_outputs", 1))


@dataclass
class Graph:
    """``inputs``/``outputs``: tensor ids; ``input_layers``: the InputLayer of each input;
    ``input_names``/``output_names``: the model's names for them (dict-keyed models);
    ``output_structure``: "single", "list", "dict" or "nested" (``output_template``: nested
    lists of output positions, e.g. ``[0, [1, 2], 3]`` for an RNN of stacked LSTM cells whose
    call is the model's output: Keras nests each cell's states); ``aliases``: extra names of tensors
    (a nested model's output is also named after the nested model's call)."""
    inputs: list
    outputs: list
    nodes: list
    input_layers: list
    input_names: list
    output_names: list
    input_structure: str = "single"
    output_structure: str = "single"
    n_tensors: int = 0
    output_template: list = None
    aliases: dict = field(default_factory=dict)
    layer_list: list = field(default_factory=list)

    def layers(self):
        """The distinct layers (and operations) in Keras' order: the config's, a nested
        model's layers in its place. Weights and gradients follow this order, as
        ``keras_model.weights`` does."""
        seen, out = set(), []
        for layer in self.layer_list:
            if id(layer) not in seen:
                seen.add(id(layer))
                out.append(layer)
        return out

    def consumers(self):
        """tensor id -> indices of the nodes that read it."""
        out = {}
        for i, node in enumerate(self.nodes):
            for t in node.inputs:
                if t is not None:
                    out.setdefault(t, []).append(i)
        return out


class _Ids:
    """Tensor id counter shared by a model and the nested models instantiated in it."""

    def __init__(self):
        self.n = 0

    def new(self):
        self.n += 1
        return self.n - 1


def _refs(obj, out=None):
    """``(args, kwargs)`` structure with every ``__keras_tensor__`` replaced by a TensorRef;
    ``out`` collects the refs in order."""
    if isinstance(obj, dict):
        if obj.get("class_name") == "__keras_tensor__":
            hist = (obj.get("config") or {}).get("keras_history")
            if not (isinstance(hist, list) and len(hist) == 3 and isinstance(hist[0], str)
                    and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in hist[1:])):
                raise ModelFileError(f"malformed tensor reference {str(obj)[:120]} (keras_history "
                                     "must be [layer name, node index, tensor index])")
            ref = TensorRef(*hist)
            if out is not None:
                out.append(ref)
            return ref
        return {k: _refs(v, out) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_refs(v, out) for v in obj]
    return obj


def _call_of(node, where):
    """``(args, kwargs)`` of one inbound node, in either config format."""
    if isinstance(node, dict):
        args, kwargs = node.get("args", []), node.get("kwargs", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise ModelFileError(f"{where}: inbound node has malformed args/kwargs")
        return args, kwargs
    if isinstance(node, list):  # Keras 2 format: [[name, node_index, tensor_index, kwargs], ...]
        refs = []
        for item in node:
            if not (isinstance(item, list) and len(item) >= 3):
                raise ModelFileError(f"{where}: malformed inbound node {str(item)[:80]}")
            refs.append({"class_name": "__keras_tensor__", "config": {"keras_history": list(item[:3])}})
        return ([refs[0]] if len(refs) == 1 else [refs]), {}
    raise ModelFileError(f"{where}: malformed inbound node {str(node)[:80]}")


def _io_refs(spec, what, model_name):
    """``input_layers``/``output_layers`` -> ``(structure, names, [TensorRef])``."""
    def ref(item):
        if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)):
            raise ModelFileError(f"model '{model_name}': malformed {what} entry {str(item)[:80]}")
        return TensorRef(item[0], item[1], item[2])

    if isinstance(spec, dict):
        names = list(spec)
        return "dict", names, [ref(spec[k]) for k in names]
    if isinstance(spec, list) and spec and isinstance(spec[0], str):
        return "single", [spec[0]], [ref(spec)]
    if isinstance(spec, list) and spec:
        refs = [ref(s) for s in spec]
        return ("single" if len(refs) == 1 else "list"), [r.layer for r in refs], refs
    raise ModelFileError(f"model '{model_name}' has no {what}")


def _nested_outputs(spec):
    """``(flat list of [name, node, index] entries, template)`` when ``output_layers`` nests
    lists of entries (a call whose outputs nest, as ``RNN(StackedRNNCells)``'s states),
    else None. The template holds each entry's position in the flat list."""
    def is_entry(item):
        return isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
    if not isinstance(spec, list) or is_entry(spec) or all(is_entry(i) for i in spec):
        return None
    flat = []

    def walk(item, depth):
        if is_entry(item):
            flat.append(item)
            return len(flat) - 1
        if not isinstance(item, list) or not item or depth > MAX_NESTING:
            raise ModelFileError(f"malformed output_layers entry {str(item)[:80]}")
        return [walk(i, depth + 1) for i in item]
    return flat, walk(spec, 0)


def entry_name(entry):
    return entry.get("name") or (entry.get("config") or {}).get("name")


def build_graph(model_cfg, make_layer, make_input, depth=0, ids=None):
    """The :class:`Graph` of a Sequential or Functional ``model_cfg``.

    ``make_layer(entry, index_in_model, depth)`` builds a layer (weights loaded) or
    returns a nested model's Graph (through :func:`build_graph`); ``make_input(config)``
    builds an InputLayer from its config. Raises ModelFileError for a malformed graph
    (unknown layer, node or tensor, a cycle, a duplicate name) and UnsupportedLayerError
    for what scratch_layers does not run."""
    if depth > MAX_NESTING:
        raise UnsupportedLayerError(f"models nested more than {MAX_NESTING} levels deep")
    ids = ids or _Ids()
    cls = model_cfg.get("class_name")
    cfg = model_cfg.get("config") or {}
    name = cfg.get("name", cls)
    entries = cfg.get("layers")
    if not isinstance(entries, list):
        raise ModelFileError(f"model config of class '{cls}' has no 'layers' list")
    if cls == "Sequential":
        return _sequential(cfg, entries, name, make_layer, make_input, depth, ids)
    if cls not in ("Functional", "Model"):
        raise UnsupportedLayerError(f"model class '{cls}' is not supported (only Sequential and "
                                    "Functional models)")
    return _functional(cfg, entries, name, make_layer, make_input, depth, ids)


def _sequential(cfg, entries, name, make_layer, make_input, depth, ids):
    if entries and entries[0].get("class_name") == "InputLayer":
        input_layer = make_input(entries[0].get("config") or {})
        entries = entries[1:]
    else:
        input_layer = make_input({"name": "input", "batch_shape": cfg.get("build_input_shape")})
    t = ids.new()
    graph = Graph([t], [], [], [input_layer], [input_layer.name], [])
    for i, e in enumerate(entries):
        obj = make_layer(e, i + 1, depth)
        lname = entry_name(e) or f"layer_{i}"
        if isinstance(obj, Graph):
            t = _instantiate(obj, [t], graph, lname, ids)[0]
        else:
            if getattr(obj, "multi_input", False):
                raise UnsupportedLayerError(f"layer '{lname}' ({e.get('class_name')}) takes several "
                                            "inputs and cannot be part of a Sequential model")
            if n_outputs(obj) > 1:
                raise UnsupportedLayerError(f"layer '{lname}' ({e.get('class_name')}) gives "
                                            f"{n_outputs(obj)} outputs (return_state=True, or a "
                                            "Bidirectional with merge_mode=None), which a "
                                            "Sequential model cannot pass on; use a Functional model")
            out = ids.new()
            graph.nodes.append(Node(obj, [t], out, lname))
            t = out
        graph.layer_list.extend(obj.layer_list if isinstance(obj, Graph) else [obj])
    graph.outputs, graph.output_names = [t], [name]
    graph.n_tensors = ids.n
    return graph


def _functional(cfg, entries, name, make_layer, make_input, depth, ids):
    by_name, order = {}, {}
    for i, e in enumerate(entries):
        lname = entry_name(e)
        if not isinstance(lname, str):
            raise ModelFileError(f"model '{name}': layers[{i}] has no name")
        if lname in by_name:
            raise ModelFileError(f"model '{name}': two layers are named '{lname}'")
        by_name[lname], order[lname] = e, i
    in_kind, in_names, in_refs = _io_refs(cfg.get("input_layers"), "input_layers", name)
    nested = _nested_outputs(cfg.get("output_layers"))
    out_kind, out_names, out_refs = _io_refs(nested[0] if nested else cfg.get("output_layers"),
                                             "output_layers", name)
    for r in out_refs:
        # Keras numbers a nested Functional model's calls from 1 in input/output_layers
        # (its node 0 is its own), from 0 in inbound nodes (functional_from_config)
        if (by_name.get(r.layer) or {}).get("class_name") == "Functional" and r.node_index > 0:
            r.node_index -= 1

    # every call (layer name, node index) with the refs it reads
    calls = {}
    for lname, e in by_name.items():
        if e.get("class_name") == "InputLayer":
            calls[(lname, 0)] = ((), {}, [], 0)
            continue
        nodes = e.get("inbound_nodes")
        if not isinstance(nodes, list):
            raise ModelFileError(f"model '{name}': layer '{lname}' has no inbound_nodes list")
        for pos, node in enumerate(nodes):
            k = pos
            where = f"model '{name}': layer '{lname}' call {pos}"
            args, kwargs = _call_of(node, where)
            refs = []
            # the ``mask`` kwarg Keras records is the propagated mask of the input, which
            # the executor propagates itself: not a dependency
            args = _refs(args, refs)
            kwargs = {key: _refs(v, None if key == "mask" else refs) for key, v in kwargs.items()}
            if len(refs) > MAX_CALL_INPUTS:
                raise ModelFileError(f"{where} reads {len(refs)} tensors (at most {MAX_CALL_INPUTS}); "
                                     "the file is corrupt or hostile")
            calls[(lname, k)] = (args, kwargs, refs, pos)

    def check(ref, where):
        if ref.layer not in by_name:
            raise ModelFileError(f"{where} references unknown layer '{ref.layer}'")
        if (ref.layer, ref.node_index) not in calls:
            raise ModelFileError(f"{where} references call {ref.node_index} of layer '{ref.layer}', "
                                 "which does not exist (node_index out of range)")

    for key, (_, _, refs, _) in calls.items():
        for r in refs:
            check(r, f"model '{name}': layer '{key[0]}' call {key[1]}")
    for r in in_refs + out_refs:
        check(r, f"model '{name}': input/output")

    # only the calls the outputs need (Keras records e.g. the NotEqual op computing an
    # Embedding's mask, which nothing reads once masks propagate)
    needed, todo = set(), [(r.layer, r.node_index) for r in out_refs + in_refs]
    while todo:
        key = todo.pop()
        if key not in needed:
            needed.add(key)
            todo.extend((r.layer, r.node_index) for r in calls[key][2])
    calls = {key: c for key, c in calls.items() if key in needed}

    # Kahn's algorithm over calls, ties broken by config order (deterministic, and the
    # order Keras itself lists the layers in)
    deps = {key: {(r.layer, r.node_index) for r in c[2]} for key, c in calls.items()}
    users = {}
    for key, ds in deps.items():
        for d in ds:
            users.setdefault(d, []).append(key)
    waiting = {key: len(ds) for key, ds in deps.items()}
    ready = [(order[k[0]], k[1], k) for k, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    topo = []
    while ready:
        _, _, key = heapq.heappop(ready)
        topo.append(key)
        for u in users.get(key, ()):
            waiting[u] -= 1
            if waiting[u] == 0:
                heapq.heappush(ready, (order[u[0]], u[1], u))
    if len(topo) != len(calls):
        stuck = sorted(k[0] for k, n in waiting.items() if n > 0)
        raise ModelFileError(f"model '{name}': the graph has a cycle through layer(s) "
                             f"{', '.join(stuck[:5])}; the file is corrupt")

    graph = Graph([], [], [], [], in_names, out_names, in_kind, "nested" if nested else out_kind)
    graph.output_template = nested[1] if nested else None
    tensors = {}       # (layer, node_index, tensor_index) -> tensor id
    objects = {}       # layer name -> Layer or nested Graph (built once: shared)
    for key in topo:
        lname, k = key
        e = by_name[lname]
        args, kwargs, refs, pos = calls[key]
        if e.get("class_name") == "InputLayer":
            layer = make_input(e.get("config") or {})
            t = ids.new()
            tensors[(lname, 0, 0)] = t
            objects[lname] = layer
            continue
        if lname not in objects:
            objects[lname] = make_layer(e, order[lname], depth)
        obj = objects[lname]
        call_name = lname if pos == 0 else f"{lname}:{pos}"  # the layer's pos-th call here
        if isinstance(obj, Graph):
            inputs = _nested_inputs(obj, args, call_name)
            outs = _instantiate(obj, [_tensor(tensors, r, call_name) for r in inputs], graph,
                                call_name, ids)
            for j, t in enumerate(outs):
                tensors[(lname, k, j)] = t
            continue
        inputs, options = obj.split_call(args, kwargs)
        t = ids.new()
        graph.nodes.append(Node(obj, [None if r is None else _tensor(tensors, r, call_name) for r in inputs],
                                t, call_name, options))
        tensors[(lname, k, 0)] = t
        if n_outputs(obj) > 1:  # the call's tensor is a tuple: one item node per output
            for j in range(n_outputs(obj)):
                tensors[(lname, k, j)] = ids.new()
                graph.nodes.append(Node(OutputItem(j, obj), [t], tensors[(lname, k, j)],
                                        f"{call_name}[{j}]"))
        if len(graph.nodes) > MAX_NODES:
            raise ModelFileError(f"model '{name}' has more than {MAX_NODES} nodes")
    for r in in_refs:
        if by_name[r.layer].get("class_name") != "InputLayer":
            raise ModelFileError(f"model '{name}': input '{r.layer}' is not an InputLayer")
        graph.inputs.append(tensors[r.key()])
        graph.input_layers.append(objects[r.layer])
    graph.outputs = [_tensor(tensors, r, f"model '{name}' output") for r in out_refs]
    graph.n_tensors = ids.n
    for lname in sorted(objects, key=order.get):
        obj = objects[lname]
        if isinstance(obj, Graph):
            graph.layer_list.extend(obj.layer_list)
        elif by_name[lname].get("class_name") != "InputLayer":
            graph.layer_list.append(obj)
    return graph


def _tensor(tensors, ref, where):
    t = tensors.get(ref.key())
    if t is None:
        raise ModelFileError(f"{where}: reads output {ref.tensor_index} of call {ref.node_index} of "
                             f"layer '{ref.layer}', which that call does not produce")
    return t


def _nested_inputs(sub, args, where):
    """The TensorRefs a call of nested model ``sub`` passes, in ``sub.inputs`` order."""
    x = args[0] if len(args) == 1 else list(args)
    if isinstance(x, dict):
        missing = [n for n in sub.input_names if n not in x]
        if missing:
            raise ModelFileError(f"{where}: call of a nested model lacks inputs {missing}")
        x = [x[n] for n in sub.input_names]
    elif is_tensor(x):
        x = [x]
    if not (isinstance(x, list) and all(is_tensor(r) for r in x)):
        raise ModelFileError(f"{where}: a nested model is called on {str(args)[:100]}")
    if len(x) != len(sub.inputs):
        raise ModelFileError(f"{where}: a nested model with {len(sub.inputs)} input(s) is called "
                             f"on {len(x)} tensor(s)")
    return x


def _instantiate(sub, input_ids, graph, call_name, ids):
    """Copy the nodes of nested model ``sub`` into ``graph``, reading ``input_ids``; returns
    the ids of its outputs. Layers are shared between instantiations (same weights)."""
    remap = dict(zip(sub.inputs, input_ids))
    for node in sub.nodes:
        out = ids.new()
        remap[node.output] = out
        graph.nodes.append(Node(node.layer, [None if t is None else remap[t] for t in node.inputs], out,
                                f"{call_name}/{node.name}", dict(node.options)))
    for alias, t in sub.aliases.items():
        graph.aliases[f"{call_name}/{alias}"] = remap[t]
    outs = [remap[t] for t in sub.outputs]
    for j, t in enumerate(outs):
        graph.aliases[call_name if j == 0 else f"{call_name}[{j}]"] = t
    return outs
