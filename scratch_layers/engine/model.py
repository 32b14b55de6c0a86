"""The :class:`Model`: a Keras model's graph, with predict, intermediate outputs and the
training API (:mod:`scratch_layers.training.backward`)."""
from __future__ import annotations

from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..blas import blas_threads, default_workers
from ..errors import InputError, ModelFileError, ScratchError
from ..layers.layer import from_keras_order, keras_ordered
from ..saving.writing import save_model
from ..training.backward import forward_backward, train_on_batch
from . import executor
from .inputs import as_compute, prepare_inputs

# Working-set budget per chunk, in bytes of the compute dtype (a float32 chunk holds twice
# the samples of a float64 one). Convolutional models use small chunks
# whose im2col buffers stay in the CPU cache; recurrent models want large chunks
# (the Python time loop's overhead is paid once per chunk). Memory stays bounded.
CHUNK_BUDGET_BYTES = 8 * 2 ** 20
RNN_CHUNK_BUDGET_BYTES = 64 * 2 ** 20
MAX_CHUNK = 4096
# keras_model.predict's default batch_size: the padding unit of a TextVectorization
# without output_sequence_length (see Model._keras_batches).
KERAS_PREDICT_BATCH = 32
# predict runs in stages (executor.stages) when its first chunk holds fewer samples than
# this: the later GEMMs would get a handful of rows (ResNet50 at 96x96: chunks of 4 images,
# 36 rows in stage 5); larger chunks gain nothing from it and pay each stage's buffers.
STAGED_BELOW = 32
STAGE_GROWTH_MAX = 8
# A staged predict splits the batch in at least this many parts: one per core of the
# machine, at least 2.
STAGED_PARTS = max(2, default_workers())


def _input_kind(input_layer, readers):
    """``("string" | "int" | "float", the layer that reads strings or None)``: what an input
    takes, from its dtype and what its readers declare (``Layer.input_kind``)."""
    dtype = str(getattr(input_layer, "dtype", "float32"))
    text = next((l for l in readers if l.input_kind == "string"), None)
    if dtype == "string" or text is not None:  # (Hashing reads strings or numbers)
        return "string", text or next((l for l in readers if hasattr(l, "as_strings")), None)
    if dtype.startswith(("int", "uint")) or any(l.input_kind == "int" for l in readers):
        return "int", None
    return "float", None


def _output_array(o, dtype):
    """A model output in the compute dtype; strings (an inverted StringLookup) stay strings."""
    o = np.asarray(o)
    return o if o.dtype.kind in "OUS" else o.astype(dtype, copy=False)


class Model:
    """A Keras model as a graph (:class:`~scratch_layers.engine.graph.Graph`) of layer calls.

    ``predict`` runs the fused plan (:mod:`scratch_layers.engine.executor`) in chunks of the
    batch; ``intermediate_outputs`` runs every node unfused; training
    (:meth:`loss_and_gradients`, :meth:`train_on_batch`) runs the unfused nodes with a
    backward pass (:mod:`scratch_layers.training`). Inputs and outputs follow Keras: one
    array, or a list (or dict keyed by name) for a model with several."""

    def __init__(self, name, graph):
        self.name = name
        self.source = None  # {"format": "keras" | "h5", "path": ...} when loaded from a file
        self.graph = graph
        self.layers = graph.layers()
        self.input_layers = list(graph.input_layers)
        self.input_layer = self.input_layers[0] if self.input_layers else None
        self.input_names = list(graph.input_names)
        self.output_names = list(graph.output_names)
        self._chunks = {}
        self.n_workers = default_workers()
        self._recurrent = any(l.recurrent for l in self.layers)
        self.dtype = np.dtype(np.float64)
        readers = {}
        for node in graph.nodes:
            for t in node.inputs:
                readers.setdefault(t, []).append(node.layer)
        kinds = [_input_kind(l, readers.get(t, [])) for l, t in zip(self.input_layers, graph.inputs)]
        self.input_kinds = [kind for kind, _ in kinds]
        self.input_readers = [reader for _, reader in kinds]
        self.input_kind = self.input_kinds[0] if self.input_kinds else "float"
        # TextVectorization without output_sequence_length pads each batch to its own
        # longest text, as Keras pads each predict batch: chunks must be Keras' batches
        self._keras_batches = any(l.pads_each_batch for l in self.layers)
        self._replan()

    def _replan(self):
        self._plan = executor.plan_steps(self.graph)
        self._frees = executor.last_uses(self._plan, set(self.graph.outputs))
        self._unfused = executor.plan_steps(self.graph, fuse=False)
        self._unfused_frees = executor.last_uses(self._unfused, set(self.graph.outputs))
        self._chunks = {}

    def __repr__(self):
        return f"<scratch_layers.Model '{self.name}': {len(self.graph.nodes)} nodes, " + \
            " -> ".join(l.class_name for l in self.layers[:12]) + (" ..." if len(self.layers) > 12 else "") + ">"

    def summary(self):
        """One line per node, in the order they run: node name, class, the nodes it reads."""
        producer = {n.output: n.name for n in self.graph.nodes}
        producer.update({t: l.name for t, l in zip(self.graph.inputs, self.input_layers)})
        return "\n".join(f"{n.name:30s} {n.layer.class_name:24s} <- "
                         + ", ".join(producer.get(t, "-") if t is not None else "-" for t in n.inputs)
                         for n in self.graph.nodes)

    def astype(self, dtype):
        """Compute in ``dtype`` from now on ("float64": the exact reference, default;
        "float32": Keras' own precision, about twice as fast on matmul-bound models).
        Every floating-point weight is cast once; inputs are cast per chunk."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype}")
        for layer in self.layers:
            _cast_layer(layer, dtype)
            if hasattr(layer, "float_dtype"):  # operations that make floats (Cast, Arange)
                layer.float_dtype = dtype
        self.dtype = dtype
        self._replan()
        return self

    def check_layers_fit(self):
        """Run one dummy sample through the graph (called at load time), so weights that
        do not fit the output of the layer before them are reported as a broken file
        (ModelFileError naming the layer), not later as bad user input. When an input has
        unknown non-batch sizes (tried as 1) a failure proves nothing and is ignored."""
        probe, exact = self._probe_sample()
        if probe is None:
            return

        def check(step, xs, ms):
            try:
                with np.errstate(all="ignore"):  # e.g. 0/0 when the dummy ids are all padding
                    return executor.run_step(step, xs, ms)
            except ValueError as e:
                if isinstance(e, ScratchError) and not isinstance(e, InputError):
                    raise
                # a lookup without OOV buckets refuses the dummy token: that proves nothing
                if not exact or getattr(step[0], "dummy_input_may_fail", False):
                    raise _Inexact() from None
                layer = step[0]
                shapes = ", ".join(str((None,) + np.shape(x)[1:]) for x in xs if x is not None)
                what = "does not fit its inputs, of shapes" if len(xs) > 1 else \
                    "its weights do not fit its input, of shape"
                raise ModelFileError(
                    f"{layer.class_name} layer '{layer.name}': {what} {shapes} in this model "
                    f"({e}); the file's config and weights do not belong together") from None
        try:
            executor.run(self.graph, self._unfused, self._unfused_frees, probe, run_step=check)
        except _Inexact:
            return

    def _probe_sample(self):
        """``(one dummy sample per input or None, whether their shapes are exact)``."""
        probe, exact = [], True
        for layer, kind in zip(self.input_layers, self.input_kinds):
            if kind == "string":  # "a" in the input's shape ((1,) when it has none)
                dims = tuple(1 if d is None else int(d) for d in (layer.batch_shape or (None,))[1:])
                probe.append(np.full((1,) + dims, "a", dtype=object))
                exact = exact and not self._keras_batches
                continue
            shape = layer.batch_shape
            if shape is None:
                return None, False
            dims = tuple(1 if d is None else int(d) for d in shape[1:])
            exact = exact and None not in shape[1:]
            probe.append(np.zeros((1,) + dims, np.int64 if kind == "int" else self.dtype))
        return probe, exact

    # ------------------------------------------------------------------ input
    def _chunk_size(self, xs):
        """Pick a chunk so one chunk's live activations (incl. im2col) fit the budget.
        Sized for this call's sample shapes (a variable-length input may be 10x longer
        than in the previous call), cached per sample shape."""
        chunk = self._chunk_plan(xs)[0][2]
        if self._recurrent and self.n_workers > 1:  # one big chunk per worker is best
            chunk = min(chunk, -(-len(xs[0] if isinstance(xs, list) else xs) // self.n_workers))
        return max(1, chunk)

    def _chunk_plan(self, xs):
        """``[(start, stop, chunk)]``: predict's plan in stages (:func:`executor.stages`),
        each with the chunk its samples fit in the budget; one stage for recurrent models
        and for those that pad each Keras batch. Cached per sample shape."""
        xs = xs if isinstance(xs, list) else [xs]
        key = tuple(x.shape[1:] for x in xs)
        if key not in self._chunks:
            try:
                probe = as_compute(self, [x[:1] for x in xs])
                profile = executor.sample_profile(self.graph, self._plan, self._frees, probe)
            except InputError as e:
                raise InputError(f"input of shape {', '.join(str(x.shape) for x in xs)} does not fit "
                                 f"model '{self.name}': {e}") from None
            budget = RNN_CHUNK_BUDGET_BYTES if self._recurrent else CHUNK_BUDGET_BYTES
            staged = executor.stages(profile) if not (self._recurrent or self._keras_batches) else \
                [(0, len(self._plan), max(profile, default=1))]
            fit = [int(max(1, min(MAX_CHUNK, budget // (self.dtype.itemsize * peak)))) for _, _, peak in staged]
            # a later stage's chunk at most STAGE_GROWTH_MAX times the first: every stage
            # holds a chunk's tensors at once, so the total stays a few budgets
            self._chunks[key] = [(a, b, min(c, fit[0] * STAGE_GROWTH_MAX)) for (a, b, _), c in zip(staged, fit)]
        return self._chunks[key]

    # -------------------------------------------------------------- inference
    def _run_staged(self, xs, plan):
        """The outputs (a list) of the graph on one part of the batch, stage by stage
        (``plan``: :meth:`_chunk_plan`), depth first: a stage runs as soon as the stage
        before has produced one chunk of its size, so each stage holds at most one chunk."""
        values, _, _ = executor.merge_states(list(self._stage_states(xs, plan, len(plan) - 1)))
        return [values[t] for t in self.graph.outputs]

    def _stage_states(self, xs, plan, level):
        """The live tensors after stage ``level``, as states (values, masks, count) of at
        most that stage's chunk of samples each."""
        start, stop, chunk = plan[level]
        if level == 0:
            sources = ((dict(zip(self.graph.inputs, as_compute(self, [x[lo:lo + chunk] for x in xs]))),
                        dict.fromkeys(self.graph.inputs), len(xs[0][lo:lo + chunk]))
                       for lo in range(0, len(xs[0]), chunk))
        else:
            sources = self._gathered(self._stage_states(xs, plan, level - 1), chunk)
        for values, masks, count in sources:
            executor.run_range(self._plan, self._frees, values, masks, start, stop)
            yield values, masks, count

    @staticmethod
    def _gathered(states, chunk):
        """Consecutive states merged into ones of at most ``chunk`` samples."""
        group, count = [], 0
        for state in states:
            if group and count + state[2] > chunk:
                merged = executor.merge_states(group)
                group, count = [], 0  # the parts are freed before the merged state runs
                yield merged
            group.append(state)
            count += state[2]
        if group:
            yield executor.merge_states(group)

    def _run(self, xs, collect=False):
        """The outputs (a list) of the graph on one chunk; with ``collect``, an ordered
        dict node name -> output of every node, unfused."""
        xs = as_compute(self, xs)
        if not collect:
            return executor.run(self.graph, self._plan, self._frees, xs)
        outs = OrderedDict()
        names = {}
        for alias, t in self.graph.aliases.items():
            names.setdefault(t, []).append(alias)

        def record(step, y, live):
            for node in step.nodes:
                if getattr(node.layer, "hidden", False):
                    continue  # an OutputItem: its output is recorded with the call's
                if isinstance(y, tuple):  # several outputs: ``name``, ``name[1]``, ...
                    for j, item in enumerate(y):
                        outs[node.name if j == 0 else f"{node.name}[{j}]"] = np.asarray(item)
                    continue
                outs[node.name] = np.asarray(y)
            for alias in names.get(step.output, ()):
                outs[alias] = np.asarray(y)
        executor.run(self.graph, self._unfused, self._unfused_frees, xs, on_output=record)
        return outs

    def _structure(self, outs):
        """The outputs as Keras returns them: one array, a list, or a dict by name."""
        if self.graph.output_structure == "dict":
            return dict(zip(self.output_names, outs))
        if self.graph.output_structure == "nested":
            def build(item):
                return [build(i) for i in item] if isinstance(item, list) else outs[item]
            return build(self.graph.output_template)
        if self.graph.output_structure == "list":
            return list(outs)
        return outs[0]

    def predict(self, x, batch_size=None, allow_nonfinite=False):
        """Forward pass; same shape/meaning as ``keras_model.predict(x)``, in the model's
        compute dtype (float64 unless loaded with ``dtype="float32"``). ``x``: an array,
        or for a model with several inputs a list (input order) or a dict by input name;
        several outputs come back as a list, or a dict when the model was built with one.

        ``batch_size`` only sets the internal chunk size (results do not depend on it),
        except after a TextVectorization without output_sequence_length: there, as in
        Keras, each batch of ``batch_size`` (default 32) texts is padded to its longest.
        Non-finite float input raises InputError unless ``allow_nonfinite=True``."""
        xs = prepare_inputs(self, x, allow_nonfinite)
        # Always one BLAS thread per worker: OpenBLAS's own threading is slower for our
        # chunk-sized matmuls and pathologically slow (10x) when the CPUs are busy.
        with blas_threads(1):
            return self._structure(self._predict(xs, batch_size))

    def _predict(self, xs, batch_size):
        n = len(xs[0])
        if batch_size is not None and int(batch_size) <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if n == 0:
            return [_output_array(o, self.dtype) for o in self._run(xs)]
        plan = None
        if batch_size:
            chunk = int(batch_size)
        elif self._keras_batches:
            chunk = KERAS_PREDICT_BATCH
        else:
            chunk = self._chunk_size(xs)
            plan = self._chunk_plan(xs)
            # staged: the batch goes in parts as large as the last stage's chunk, at most
            # 1/STAGED_PARTS of it (so the workers share it; a constant, so that results
            # never depend on n_workers), each run stage by stage in chunks of the stage's size
            part = min(plan[-1][2], -(-n // STAGED_PARTS))
            if len(plan) > 1 and chunk < STAGED_BELOW and part > chunk:
                chunk = part
            else:
                plan = None
        if n <= chunk and plan is None:
            return [_output_array(o, self.dtype) for o in self._run(xs)]
        starts = list(range(0, n, chunk))
        workers = min(self.n_workers, len(starts))
        # Coarse-grained parallelism: each worker thread runs whole chunks with a
        # single-threaded BLAS (NumPy releases the GIL in BLAS and ufunc loops).
        # This scales better than BLAS's own per-matmul threading, especially on
        # busy machines. Results do not depend on the number of workers.
        def work(s):
            part = [x[s:s + chunk] for x in xs]
            outs = self._run(part) if plan is None else self._run_staged(part, plan)
            return [_output_array(o, self.dtype) for o in outs]

        if workers > 1:
            # every chunk, the first included, goes to the pool: with one chunk per
            # worker, running the first one alone before the others would serialise all
            with ThreadPoolExecutor(workers) as ex:
                parts = list(ex.map(work, starts))
        else:
            parts = [work(s) for s in starts]
        outs = []
        for j in range(len(parts[0])):
            pieces = [p[j] for p in parts]
            _check_same_shapes(pieces)
            out = np.empty((n,) + pieces[0].shape[1:], dtype=pieces[0].dtype)
            for s, piece in zip(starts, pieces):
                out[s:s + chunk] = piece
            outs.append(out)
        return outs

    def predict_classes(self, x, batch_size=None):
        """argmax over the last axis of ``predict(x)`` (of each output), in predict's
        structure: one array, a list, a dict, or nested lists (a stacked RNN's states)."""
        def classes(out):
            if isinstance(out, dict):
                return {k: classes(v) for k, v in out.items()}
            if isinstance(out, list):
                return [classes(v) for v in out]
            return np.argmax(out, axis=-1)
        return classes(self.predict(x, batch_size))

    def intermediate_outputs(self, x, allow_nonfinite=False, batch_size=None):
        """OrderedDict node name -> output of that node (unfused, node by node, in the
        order they run) for the whole batch, computed in chunks of ``batch_size`` (default
        256). A layer called several times gives ``name``, ``name:1``, ...; the nodes of a
        nested model are ``outer/inner_layer`` and its output is also named ``outer``."""
        xs = prepare_inputs(self, x, allow_nonfinite)
        chunk = int(batch_size or 256)
        n = len(xs[0])
        with blas_threads(1):
            if n <= chunk:
                return self._run(xs, collect=True)
            parts = [self._run([v[s:s + chunk] for v in xs], collect=True) for s in range(0, n, chunk)]
        out = OrderedDict()
        for k in parts[0]:
            pieces = [p[k] for p in parts]
            if all(np.ndim(q) and len(q) == min(chunk, n - i * chunk) for i, q in enumerate(pieces)):
                _check_same_shapes(pieces)
                out[k] = np.concatenate(pieces)
            else:  # no batch axis (e.g. keras.ops.arange): the same in every chunk
                out[k] = pieces[0]
        return out

    # --------------------------------------------------------------- training
    def get_weights(self):
        """Copies of every weight, aligned with ``keras_model.get_weights()`` (Keras order,
        non-trainable ones such as BatchNormalization's moving statistics included)."""
        return [np.array(w, copy=True) for layer in self.layers for w in keras_ordered(layer, layer.weights)]

    @property
    def trainable_flags(self):
        """Per weight of :meth:`get_weights`: whether it is in ``keras_model.trainable_weights``."""
        return [f for layer in self.layers for f in keras_ordered(layer, layer.trainable_flags())]

    def set_weights(self, weights):
        """Replace every weight (the list :meth:`get_weights` returns); each layer is rebuilt
        so its derived arrays (and predict's fused plan) follow."""
        weights = list(weights)
        expected = sum(len(layer.weights) for layer in self.layers)
        if len(weights) != expected:
            raise InputError(f"set_weights: model '{self.name}' has {expected} weight arrays "
                             f"(as keras_model.get_weights()), got {len(weights)}")
        i = 0
        for layer in self.layers:
            n = len(layer.weights)
            if n:
                ws = from_keras_order(layer, weights[i:i + n])
                layer.set_weights([np.array(w, dtype=self.dtype) for w in ws])
                _cast_layer(layer, self.dtype)
            i += n
        self._replan()

    def loss_and_gradients(self, x, y, training=False, seed=None, augmentation="error"):
        """``(loss, grads)``: Keras' ``SparseCategoricalCrossentropy()`` of the model's output
        against integer labels ``y`` (mean over the batch) and its gradient for each weight
        of ``keras_model.trainable_weights`` (same order and shapes), by a backward pass
        through the unfused graph (gradients add up where a tensor fans out, and a shared
        layer's gradient is the sum over its calls). ``training=True``: BatchNormalization
        uses batch statistics and Dropout draws its own mask (from ``seed`` when given);
        random augmentation layers raise unless ``augmentation="identity"``. Pure: no
        weight or moving statistic changes."""
        with self._training_threads():
            loss, grads, _ = forward_backward(self, x, y, training, seed, augmentation)
        return loss, grads

    def train_on_batch(self, x, y, optimizer, seed=None, augmentation="error"):
        """One training step in place (training-mode forward, backward, ``optimizer`` update
        such as :class:`scratch_layers.Adam`, BatchNormalization moving statistics with
        Keras' momentum). Returns the batch's loss before the update."""
        with self._training_threads():
            return train_on_batch(self, x, y, optimizer, seed, augmentation)

    def _training_threads(self):
        """One BLAS thread: OpenBLAS's own threading on one training batch is slower than
        one thread (measured 3-6x slower on 2 busy cores), as for predict."""
        return blas_threads(1)

    def save(self, path):
        """Write the model with its current weights to ``path``, in the format it was loaded
        from (``.keras``: the original config, metadata and assets with a new
        ``model.weights.h5`` in Keras' layout; legacy ``.h5``: the original file with the
        weights replaced). ``keras.models.load_model`` reads the result."""
        save_model(self, path)


class _Inexact(Exception):
    """A load-time probe failed on guessed sizes: it proves nothing about the file."""


def _check_same_shapes(parts):
    """Chunk outputs of different shapes (only a TextVectorization without
    output_sequence_length, whose output keeps each batch's own length) cannot be
    stacked; Keras' predict fails on them too."""
    shapes = {p.shape[1:] for p in parts}
    if len(shapes) > 1:
        raise InputError(f"the batches give outputs of different shapes {sorted(shapes)}: the "
                         "model keeps each batch's own text length (TextVectorization without "
                         "output_sequence_length). Pass batch_size >= len(x), or save the model "
                         "with a fixed output_sequence_length.")


def _cast_layer(layer, dtype):
    """Cast every floating-point array attribute of a layer and of the layers inside it."""
    for obj in layer.walk():
        for name, value in list(vars(obj).items()):
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                setattr(obj, name, value.astype(dtype))
            elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
                setattr(obj, name, [v.astype(dtype) if v.dtype.kind == "f" else v for v in value])
