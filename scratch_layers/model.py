"""The :class:`Model` (a linear chain of layers) and comparison helpers."""
import copy
import os
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import activations
from ._blas import blas_threads, default_workers
from .conv import Conv2D, DepthwiseConv2D, MaxPooling2D, conv_geometry, pool2d, tf_max_floor
from .core import BatchNormalization, Embedding, ReLU
from .errors import InputError, ModelFileError, ScratchError
from .recurrent import Bidirectional, RNNBase
from .text import TextVectorization

# Working-set budget per chunk, in bytes. Convolutional models use small chunks
# whose im2col buffers stay in the CPU cache; recurrent models want large chunks
# (the Python time loop's overhead is paid once per chunk). Memory stays bounded.
CHUNK_BUDGET_BYTES = 8 * 2 ** 20
RNN_CHUNK_BUDGET_BYTES = 64 * 2 ** 20
MAX_CHUNK = 4096
# im2col buffer per block of images in predict's fused Conv2D -> MaxPooling2D step (see
# _conv_then_max_pool): the patches stay in the CPU cache, while the chunk is sized by the
# activations held whole (128 CIFAR images, so the Dense layers get 128-row matmuls).
CONV_BLOCK_BYTES = 2 ** 21
# The NaN/inf check reads the input in blocks of this size (its boolean temporaries
# stay small however large the input is).
FINITE_CHECK_BYTES = 4 * 2 ** 20
# keras_model.predict's default batch_size: the padding unit of a TextVectorization
# without output_sequence_length (see Model._keras_batches).
KERAS_PREDICT_BATCH = 32


class Model:
    """A model: ``input_layer`` followed by ``layers`` applied in order.

    Each layer maps ``(x, mask) -> y`` via ``layer.forward(x, mask)`` and
    ``layer.compute_mask(x, mask)`` gives the mask passed to the next layer.
    Inference: :meth:`predict` (fused fast path). Training: :meth:`loss_and_gradients`,
    :meth:`train_on_batch`, :meth:`get_weights` / :meth:`set_weights` and :meth:`save`
    (see :mod:`scratch_layers.training`), always on the unfused layers."""

    def __init__(self, name, input_layer, layers):
        self.name = name
        self.source = None  # {"format": "keras" | "h5", "path": ...} when loaded from a file
        self.input_layer = input_layer
        self.layers = list(layers)
        self._chunks = {}
        self.n_workers = default_workers()
        self._recurrent = any(isinstance(l, (RNNBase, Bidirectional)) for l in self.layers)
        self.dtype = np.dtype(np.float64)
        self._plan, self._blocked = self._fuse()
        first = self.layers[0] if self.layers else None
        if isinstance(first, TextVectorization):
            self.input_kind = "string"
        elif isinstance(first, Embedding):
            self.input_kind = "int"
        else:
            self.input_kind = "float"
        # TextVectorization without output_sequence_length pads each batch to its own
        # longest text, as Keras pads each predict batch: chunks must be Keras' batches
        self._keras_batches = (isinstance(first, TextVectorization)
                               and first.output_sequence_length is None)

    def __repr__(self):
        return f"<scratch_layers.Model '{self.name}': " + " -> ".join(
            l.class_name for l in self.layers) + ">"

    def summary(self):
        return "\n".join(f"{l.name:30s} {l.class_name}" for l in self.layers)

    def astype(self, dtype):
        """Compute in ``dtype`` from now on ("float64": the exact reference, default;
        "float32": Keras' own precision, about twice as fast on matmul-bound models).
        Every floating-point weight is cast once; inputs are cast per chunk."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype}")
        for layer in self.layers:
            _cast_layer(layer, dtype, set())
        self.dtype = dtype
        self._plan, self._blocked = self._fuse()
        self._chunks = {}
        return self

    def check_layers_fit(self):
        """Run one dummy sample through the layers (called at load time), so weights
        that do not fit the output of the layer before them are reported as a broken
        file (ModelFileError naming the layer), not later as bad user input. When the
        input shape has unknown non-batch sizes (tried as 1) a failure proves nothing
        and is ignored."""
        h, exact = self._probe_sample()
        if h is None:
            return
        mask = None
        for layer in self.layers:
            try:
                with np.errstate(all="ignore"):  # e.g. 0/0 when the dummy ids are all padding
                    y = layer.forward(h, mask)
                mask = layer.compute_mask(h, mask)
            except ValueError as e:
                if isinstance(e, ScratchError) and not isinstance(e, InputError):
                    raise
                if not exact:
                    return
                raise ModelFileError(
                    f"{layer.class_name} layer '{layer.name}': its weights do not fit its input, "
                    f"of shape {(None,) + np.shape(h)[1:]} in this model ({e}); the file's "
                    "weights and config do not belong together") from None
            h = y

    def _probe_sample(self):
        """``(one dummy sample or None, whether its shape is the model's exact shape)``."""
        if self.input_kind == "string":
            return np.array(["a"], dtype=object), not self._keras_batches
        shape = self.input_layer.batch_shape if self.input_layer else None
        if shape is None:
            return None, False
        dims = tuple(1 if d is None else int(d) for d in shape[1:])
        dtype = np.int64 if self.input_kind == "int" else self.dtype
        return np.zeros((1,) + dims, dtype), None not in shape[1:]

    def _fuse(self):
        """``(plan, blocked)``: the execution plan for predict(), the same maths as the
        layers with fewer passes, and the ids of the layers its fused convolutions run
        block by block (the chunk size need not hold their outputs whole).

        * Conv2D(linear) -> BatchNormalization -> ReLU folds into one Conv2D: BN at
          inference is ``y * mul + add`` per channel, so ``conv(x, W) * mul + add ==
          conv(x, W * mul) + add`` (to float64 rounding, ~1e-16 relative).
        * Conv2D(relu/linear) followed by MaxPooling2D pools the raw convolution first
          and adds bias + activation afterwards: max(x + b) = max(x) + b and
          relu(max(x)) = max(relu(x)) hold exactly in floating point (monotonic ops),
          and the bias/relu passes touch 4x less data. The convolution runs in blocks
          of images (_conv_then_max_pool), so only the pooled output is held whole.
        * Embedding -> RNN folds the table into the RNN's input projection."""
        plan, i = [], 0
        blocked = set()  # ids of the layers convolved block by block (see _fit_chunk)
        while i < len(self.layers):
            a = self.layers[i]
            b = self.layers[i + 1] if i + 1 < len(self.layers) else None
            if isinstance(a, Embedding) and isinstance(b, (RNNBase, Bidirectional)):
                # Embedding -> RNN: fold the embedding table into the RNN input
                # projection ((E @ W + b)[ids] == E[ids] @ W + b), no per-token matmul
                plan.append(("embed_rnn", a, b))
                i += 2
                continue
            a, used = _fold_batchnorm(self.layers, i)
            b = self.layers[i + used] if i + used < len(self.layers) else None
            if (isinstance(a, Conv2D) and isinstance(b, MaxPooling2D)
                    and a.activation in (activations.relu, activations.linear)):
                plan.append((a, b))
                blocked.update(id(l) for l in self.layers[i:i + used + 1])
                i += used + 1
            else:
                plan.append((a,))
                i += used
        return plan, blocked

    # ------------------------------------------------------------------ input
    def _prepare(self, x, allow_nonfinite=False):
        if self.input_kind == "string":
            return np.asarray(TextVectorization.as_strings(x), dtype=object)
        try:
            arr = np.asarray(x)
        except ValueError as e:  # ragged nested lists
            raise InputError(f"input could not be converted to an array ({e}); "
                             "pass a rectangular numeric array") from None
        shape = self.input_layer.batch_shape if self.input_layer else None
        if shape is not None:
            if arr.ndim != len(shape):
                hint = ""
                if arr.ndim == len(shape) - 1:
                    hint = " (a single sample? add a batch axis: x[None])"
                raise InputError(f"model '{self.name}' expects input of rank {len(shape)} "
                                 f"with shape (batch, {', '.join(str(s) for s in shape[1:])}), "
                                 f"got shape {arr.shape}{hint}")
            for i, (want, got) in enumerate(zip(shape[1:], arr.shape[1:]), start=1):
                if want is not None and want != got:
                    what = "channels" if (i == len(shape) - 1 and arr.ndim == 4) else f"axis {i}"
                    raise InputError(f"model '{self.name}' expects input shape (batch, "
                                     f"{', '.join(str(s) for s in shape[1:])}); got {arr.shape} "
                                     f"(wrong {what}: expected {want}, got {got})")
        if self.input_kind == "int":
            return arr  # id checks (dtype, range) are done by the Embedding layer
        if arr.dtype.kind not in "fiub":
            raise InputError(f"model '{self.name}' expects a numeric float array, got dtype {arr.dtype}")
        # the input keeps its dtype here; each chunk is cast to the compute dtype when it
        # is processed (no full-size float64 copy of a large input)
        if not allow_nonfinite and arr.dtype.kind == "f":
            bad = first_nonfinite(arr)
            if bad is not None:
                raise InputError(f"input contains NaN/inf (first at index {bad}); clean the data "
                                 "or call predict(..., allow_nonfinite=True) to propagate it")
        return arr

    def _as_compute(self, x):
        """A float input chunk in the compute dtype (ids and strings pass unchanged)."""
        return np.asarray(x, dtype=self.dtype) if self.input_kind == "float" else x

    def _chunk_size(self, x):
        """Pick a chunk so one chunk's largest activation (incl. im2col) fits the budget.
        Sized for this call's sample shape (a variable-length input may be 10x longer
        than in the previous call), cached per sample shape."""
        key = x.shape[1:]
        if key not in self._chunks:
            try:
                self._chunks[key] = self._fit_chunk(self._as_compute(x[:1]))
            except InputError as e:
                raise InputError(f"input of shape {x.shape} does not fit model '{self.name}': "
                                 f"{e}") from None
        chunk = self._chunks[key]
        if self._recurrent and self.n_workers > 1:  # one big chunk per worker is best
            chunk = min(chunk, -(-len(x) // self.n_workers))
        return max(1, chunk)

    def _fit_chunk(self, h):
        """Samples per chunk for the one-sample input ``h``."""
        per, mask = 1, None
        for layer in self.layers:
            y = layer.forward(h, mask)
            mask = layer.compute_mask(h, mask)
            size = np.asarray(y).size
            if id(layer) in self._blocked:
                # convolved block by block in predict (_conv_then_max_pool): only the
                # step's input and its pooled output are held whole
                held = np.asarray(h).size if isinstance(layer, Conv2D) else 0
                per = max(per, held, size if isinstance(layer, MaxPooling2D) else 0)
                h = y
                continue
            if isinstance(layer, (Conv2D, DepthwiseConv2D)):
                k = layer.kernel
                size += size // k.shape[-1] * k.shape[0] * k.shape[1] * k.shape[2]
            per = max(per, size, np.asarray(h).size)
            h = y
        budget = RNN_CHUNK_BUDGET_BYTES if self._recurrent else CHUNK_BUDGET_BYTES
        return int(max(1, min(MAX_CHUNK, budget // (8 * per))))

    # -------------------------------------------------------------- inference
    def _run_fast(self, x):
        """predict() path: same maths as _run, with the fused steps of the plan."""
        x = self._as_compute(x)
        mask = None
        for step in self._plan:
            if step[0] == "embed_rnn":
                emb, rnn = step[1], step[2]
                ids = emb.check_ids(x)
                mask = emb.compute_mask(ids, None)
                y = rnn.forward_ids(ids, mask, emb.table)
                mask = rnn.compute_mask(None, mask)
                x = y
                continue
            if len(step) == 2:
                conv, pool = step
                y = _conv_then_max_pool(conv, pool, x)
                relu = conv.activation is activations.relu
                if not relu:
                    tf_max_floor(y)
                if conv.bias is not None:
                    y += conv.bias
                if relu:  # fmax: a window of only NaN gives relu(lowest + b) = 0, as in Keras
                    np.fmax(y, 0.0, out=y)
                x, mask = y, None
                continue
            layer = step[0]
            y = layer.forward(x, mask)
            mask = layer.compute_mask(x, mask)
            x = y
        return x

    def _run(self, x, collect=False):
        if not collect:
            return self._run_fast(x)
        x = self._as_compute(x)
        outs = OrderedDict()
        mask = None
        for layer in self.layers:
            y = layer.forward(x, mask)
            mask = layer.compute_mask(x, mask)
            x = y
            if collect:
                outs[layer.name] = np.asarray(x)
        return outs if collect else x

    def predict(self, x, batch_size=None, allow_nonfinite=False):
        """Forward pass; same shape/meaning as ``keras_model.predict(x)``, in the model's
        compute dtype (float64 unless loaded with ``dtype="float32"``).

        ``batch_size`` only sets the internal chunk size (results do not depend on it),
        except after a TextVectorization without output_sequence_length: there, as in
        Keras, each batch of ``batch_size`` (default 32) texts is padded to its longest.
        Non-finite float input raises InputError unless ``allow_nonfinite=True``."""
        x = self._prepare(x, allow_nonfinite)
        # Always one BLAS thread per worker: OpenBLAS's own threading is slower for our
        # chunk-sized matmuls and pathologically slow (10x) when the CPUs are busy.
        with blas_threads(1):
            return self._predict(x, batch_size)

    def _predict(self, x, batch_size):
        n = len(x)
        if n == 0:
            return np.asarray(self._run(x), dtype=self.dtype)
        if batch_size is not None and int(batch_size) <= 0:
            raise InputError(f"batch_size must be positive, got {batch_size}")
        if batch_size:
            chunk = int(batch_size)
        else:
            chunk = KERAS_PREDICT_BATCH if self._keras_batches else self._chunk_size(x)
        if n <= chunk:
            return np.asarray(self._run(x), dtype=self.dtype)
        starts = list(range(0, n, chunk))
        workers = min(self.n_workers, len(starts))
        # Coarse-grained parallelism: each worker thread runs whole chunks with a
        # single-threaded BLAS (NumPy releases the GIL in BLAS and ufunc loops).
        # This scales better than BLAS's own per-matmul threading, especially on
        # busy machines. Results do not depend on the number of workers.
        def work(s):
            return np.asarray(self._run(x[s:s + chunk]), dtype=self.dtype)

        if workers > 1:
            # every chunk, the first included, goes to the pool: with one chunk per
            # worker, running the first one alone before the others would serialise all
            with ThreadPoolExecutor(workers) as ex:
                parts = list(ex.map(work, starts))
        else:
            parts = [work(s) for s in starts]
        _check_same_shapes(parts)
        out = np.empty((n,) + parts[0].shape[1:], dtype=self.dtype)
        for s, part in zip(starts, parts):
            out[s:s + chunk] = part
        return out

    def predict_classes(self, x, batch_size=None):
        """argmax over the last axis of ``predict(x)``."""
        return np.argmax(self.predict(x, batch_size), axis=-1)

    def intermediate_outputs(self, x, allow_nonfinite=False, batch_size=None):
        """OrderedDict layer name -> output of that layer (unfused, layer by layer)
        for the whole batch, computed in chunks of ``batch_size`` (default 256)."""
        x = self._prepare(x, allow_nonfinite)
        chunk = int(batch_size or 256)
        with blas_threads(1):
            if len(x) <= chunk:
                return self._run(x, collect=True)
            parts = [self._run(x[s:s + chunk], collect=True) for s in range(0, len(x), chunk)]
        for k in parts[0]:
            _check_same_shapes([p[k] for p in parts])
        return OrderedDict((k, np.concatenate([p[k] for p in parts])) for k in parts[0])


    # --------------------------------------------------------------- training
    def get_weights(self):
        """Copies of every weight, aligned with ``keras_model.get_weights()`` (Keras order,
        non-trainable ones such as BatchNormalization's moving statistics included)."""
        return [np.array(w, copy=True) for layer in self.layers for w in layer.weights]

    @property
    def trainable_flags(self):
        """Per weight of :meth:`get_weights`: whether it is in ``keras_model.trainable_weights``."""
        return [f for layer in self.layers for f in layer.trainable_flags()]

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
                layer.set_weights([np.array(w, dtype=self.dtype) for w in weights[i:i + n]])
                _cast_layer(layer, self.dtype, set())
            i += n
        self._plan, self._blocked = self._fuse()
        self._chunks = {}

    def loss_and_gradients(self, x, y, training=False, seed=None, augmentation="error"):
        """``(loss, grads)``: Keras' ``SparseCategoricalCrossentropy()`` of the model's output
        against integer labels ``y`` (mean over the batch) and its gradient for each weight
        of ``keras_model.trainable_weights`` (same order and shapes), by a backward pass
        through the unfused layers. ``training=True``: BatchNormalization uses batch
        statistics and Dropout draws its own mask (from ``seed`` when given); random
        augmentation layers raise unless ``augmentation="identity"``. Pure: no weight or
        moving statistic changes."""
        from .training import forward_backward
        with self._training_threads():
            loss, grads, _ = forward_backward(self, x, y, training, seed, augmentation)
        return loss, grads

    def train_on_batch(self, x, y, optimizer, seed=None, augmentation="error"):
        """One training step in place (training-mode forward, backward, ``optimizer`` update
        such as :class:`scratch_layers.Adam`, BatchNormalization moving statistics with
        Keras' momentum). Returns the batch's loss before the update."""
        from .training import train_on_batch
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
        from .saving import save_model
        save_model(self, path)


def _conv_then_max_pool(conv, pool, x):
    """max_pool(conv(x)) without bias and activation, the convolution done in blocks of
    whole images whose im2col buffer takes at most ``CONV_BLOCK_BYTES``: each block's
    patch buffer and matmul output stay in the CPU cache however large the chunk is."""
    def block(xs):
        return pool2d(conv._conv(xs), pool.pool, pool.strides, pool.padding, "max")
    conv.check_rank(x, 4, "image batch (N, H, W, C)")
    ho, wo, _ = conv_geometry(x.shape, conv.kernel.shape, conv.strides, conv.padding, conv.dilation)
    per = max(1, CONV_BLOCK_BYTES // (ho * wo * conv.kernel[..., 0].size * x.dtype.itemsize))
    if len(x) <= per:
        return block(x)
    first = block(x[:per])
    out = np.empty((len(x),) + first.shape[1:], first.dtype)
    out[:per] = first
    for s in range(per, len(x), per):
        out[s:s + per] = block(x[s:s + per])
    return out


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


def _cast_layer(obj, dtype, seen):
    """Cast every floating-point array attribute of a layer (and of the layers it wraps)."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    for name, value in list(vars(obj).items()):
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            setattr(obj, name, value.astype(dtype))
        elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
            setattr(obj, name, [v.astype(dtype) if v.dtype.kind == "f" else v for v in value])
        elif hasattr(value, "forward") and hasattr(value, "config"):  # a wrapped layer
            _cast_layer(value, dtype, seen)


def _plain_relu(layer) -> bool:
    return (isinstance(layer, ReLU) and layer.max_value is None and layer.negative_slope == 0.0
            and layer.threshold == 0.0)


def _fold_batchnorm(layers, i):
    """``(layer, n_used)``: a Conv2D(linear) -> BatchNormalization(channels) [-> ReLU] run
    starting at ``i`` as one folded Conv2D, else ``(layers[i], 1)``."""
    conv = layers[i]
    bn = layers[i + 1] if i + 1 < len(layers) else None
    if not (type(conv) is Conv2D and conv.activation is activations.linear
            and isinstance(bn, BatchNormalization) and bn.axis in (-1, 3)
            and bn.mul.shape == (conv.kernel.shape[-1],)):
        return conv, 1
    folded = copy.copy(conv)
    folded.kernel = np.ascontiguousarray(conv.kernel * bn.mul)
    folded.bias = (conv.bias * bn.mul + bn.add) if conv.bias is not None else np.array(bn.add, copy=True)
    relu = i + 2 < len(layers) and _plain_relu(layers[i + 2])
    folded.activation = activations.relu if relu else activations.linear
    return folded, 3 if relu else 2


def first_divergence(scratch_outputs, keras_outputs, atol=1e-5, rtol=1e-5):
    """Walk layers in order (the order of ``scratch_outputs``) and return
    ``(layer_name, max_abs_diff)`` of the first layer whose outputs are not
    ``np.allclose(scratch, keras, atol, rtol)``. Layers missing from
    ``keras_outputs`` are skipped; a shape mismatch counts as divergence (diff inf).
    If nothing diverges returns ``(None, worst max_abs_diff seen)``."""
    worst = 0.0
    for name, s in scratch_outputs.items():
        if name not in keras_outputs:
            continue
        s = np.asarray(s, dtype=np.float64)
        k = np.asarray(keras_outputs[name], dtype=np.float64)
        if s.shape != k.shape:
            return name, float("inf")
        diff = float(np.max(np.abs(s - k))) if s.size else 0.0
        if not np.allclose(s, k, atol=atol, rtol=rtol, equal_nan=True):
            return name, diff
        worst = max(worst, diff)
    return None, worst
