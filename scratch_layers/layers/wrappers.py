"""Wrappers: layers around other layers (``TimeDistributed``, ``Bidirectional``)."""
import numpy as np

from ..errors import InputError, ModelFileError, UnsupportedLayerError
from .layer import Layer
from .recurrent import (
    LSTM,
    RNN,
    RNNBase,
    SimpleRNN,
    _scatter_time,
    _unsort,
    fused_bidirectional_scan,
    post_padding_order,
)

# ----------------------------------------------------------------------------- TimeDistributed

# Keras layers whose call takes a mask (TimeDistributed would give them one timestep's (N,)
# slice of the mask, which scratch_layers does not reproduce).
_MASK_CONSUMERS = ("Softmax", "GlobalAveragePooling1D", "SimpleRNN", "LSTM", "GRU", "RNN",
                   "Bidirectional", "Attention", "AdditiveAttention", "MultiHeadAttention",
                   "TimeDistributed")


class Wrapper(Layer):
    """A layer around other layers, as Keras' ``Wrapper``: the loader builds the wrapped
    layers from the entries :meth:`wrapped_entries` names (each on its slice of the
    weights, in order) and hands them to the constructor. A wrapper never looks a layer
    class up itself."""

    @classmethod
    def wrapped_entries(cls, config):
        """The ``{"class_name": ..., "config": ...}`` entries of the wrapped layers."""
        raise NotImplementedError

    @classmethod
    def check_wrapped(cls, config, class_name, ctor):
        """Raise UnsupportedLayerError if this wrapper cannot run a wrapped ``class_name``."""

    @staticmethod
    def _entry(config, key, wrapper):
        entry = config.get(key)
        if not isinstance(entry, dict) or not isinstance(entry.get("class_name"), str) \
                or not isinstance(entry.get("config") or {}, dict):
            raise ModelFileError(f"{wrapper} layer '{config.get('name')}': '{key}' is not a layer entry")
        return {"class_name": entry["class_name"], "config": entry.get("config") or {}}

    def __init__(self, config, weights, class_name=None, wrapped=()):
        self.n_weights = len(weights)
        super().__init__(config, weights, class_name)
        self.wrapped = list(wrapped)

    def sublayers(self):
        return self.wrapped

    def _rebuilt(self, weights):
        """Each wrapped layer takes its slice of ``weights``, then the wrapper is rebuilt on them."""
        i = 0
        for sub in self.wrapped:
            n = len(sub.weights)
            sub.set_weights(weights[i:i + n])
            i += n
        return type(self)(self.config, weights, self.class_name, wrapped=self.wrapped)


class TimeDistributed(Wrapper):
    """Keras ``TimeDistributed(layer)``: the inner layer on every timestep.

    Forward: x (N, T, ...) -> y = inner(x.reshape(N*T, ...)).reshape(N, T, ...).
    Backward: dx = inner.backward(dy.reshape(N*T, ...)).reshape(N, T, ...); the weight
    gradients are the inner layer's (summed over all N*T rows by its own backward).
    The mask passes through unchanged (Keras' default compute_mask); the inner layer
    sees none.
    """

    supports_masking = True

    @classmethod
    def wrapped_entries(cls, config):
        return [cls._entry(config, "layer", "TimeDistributed")]

    @classmethod
    def check_wrapped(cls, config, class_name, ctor):
        if getattr(ctor, "multi_input", False) or class_name in ("InputLayer", "TextVectorization"):
            raise UnsupportedLayerError(f"TimeDistributed layer '{config.get('name')}': "
                                        f"unsupported inner layer class '{class_name}'")

    def __init__(self, config, weights, class_name=None, wrapped=()):
        super().__init__(config, weights, class_name, wrapped)
        self.layer, = self.wrapped

    def _fold(self, x):
        if x.ndim < 3:
            raise InputError(f"{self.class_name} layer '{self.name}': expected an input of rank "
                             f">= 3 (batch, time, ...), got shape {x.shape}")
        return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])

    def _check_mask(self, mask):
        if mask is not None and self.layer.class_name in _MASK_CONSUMERS:
            raise UnsupportedLayerError(
                f"{self.class_name} layer '{self.name}': a mask reaching a wrapped "
                f"{self.layer.class_name} (Keras hands it one timestep's mask) is not supported")

    def forward(self, x, mask=None):
        self._check_mask(mask)
        y = self.layer.forward(self._fold(x), None)
        return y.reshape(x.shape[:2] + y.shape[1:])

    def compute_mask(self, x, mask):
        return mask

    def forward_train(self, x, mask, ctx):
        self._check_mask(mask)
        y = self.layer.forward_train(self._fold(x), None, ctx)
        self._shape = x.shape
        return y.reshape(x.shape[:2] + y.shape[1:])

    def backward(self, dy, need_dx=True):
        n, t = self._shape[:2]
        dx, grads = self.layer.backward(dy.reshape((n * t,) + dy.shape[2:]), need_dx)
        return (None if dx is None else dx.reshape(self._shape)), grads

    def trainable_flags(self):
        flags = self.layer.trainable_flags()
        return flags if self.config.get("trainable", True) else [False] * len(flags)

    def state_updates(self):
        return self.layer.state_updates() if hasattr(self.layer, "state_updates") else None

    def gradient_squares(self):
        if hasattr(self.layer, "gradient_squares"):
            return self.layer.gradient_squares()
        return [None] * len(self.weights)


class Bidirectional(Wrapper):
    """Bidirectional wrapper: a forward and a backward (go_backwards) copy of the
    wrapped RNN run on the same input and mask. As in Keras, both copies use
    ``zero_output_for_mask = return_sequences``; the backward output sequence is
    flipped back to input order only when ``return_sequences``. Merge modes:
    concat (default), sum, ave, mul, and None (no merge: the two outputs).

    The call's outputs are Keras' (``Bidirectional.call``): the merged output, or with
    merge_mode None the forward then the backward output; then, with ``return_state``,
    the forward layer's final states followed by the backward layer's (each layer's own
    ``return_state`` order, e.g. LSTM h, c). More than one output makes it a call with
    several outputs (``engine.graph.OutputItem``); only the (merged) outputs carry the
    mask, the states none."""

    recurrent = True

    supports_masking = True

    @classmethod
    def wrapped_entries(cls, config):
        """The forward layer, then the backward one (a go_backwards copy of the forward
        layer's config when the file names none)."""
        forward = cls._entry(config, "layer", "Bidirectional")
        if config.get("backward_layer") is None:
            return [forward, {"class_name": forward["class_name"],
                              "config": dict(forward["config"], go_backwards=True)}]
        return [forward, cls._entry(config, "backward_layer", "Bidirectional")]

    @classmethod
    def check_wrapped(cls, config, class_name, ctor):
        if not issubclass(ctor, (RNNBase, RNN)):
            raise UnsupportedLayerError(
                f"Bidirectional layer '{config.get('name')}': wrapped layer class '{class_name}' is "
                f"not supported (supported: SimpleRNN, LSTM, GRU, RNN of their cells, "
                f"ConvLSTM1D/2D/3D)")

    def __init__(self, config, weights, class_name=None, wrapped=()):
        super().__init__(config, weights, class_name, wrapped)
        self.merge_mode = self.require("merge_mode", ("concat", "sum", "ave", "mul", None), "concat")
        self.forward_layer, self.backward_layer = self.wrapped
        if self.forward_layer.go_backwards == self.backward_layer.go_backwards:
            raise self.unsupported("go_backwards", self.backward_layer.go_backwards,
                                   "forward and backward layers must differ")
        for attr in ("return_sequences", "return_state"):  # Keras' _verify_layer_config
            if getattr(self.forward_layer, attr) != getattr(self.backward_layer, attr):
                raise ModelFileError(f"Bidirectional layer '{self.name}': the forward and backward "
                                     f"layers differ in {attr} (Keras requires the same value)")
        self.return_sequences = self.forward_layer.return_sequences
        self.return_state = self.forward_layer.return_state
        if self.return_state and self.forward_layer.n_states() != self.backward_layer.n_states():
            # Keras' compute_output_shape counts the forward layer's states twice, its call
            # returns each layer's own: the model's outputs do not match its call's
            raise self.unsupported("return_state", True, "the forward and backward layers have "
                                   "different numbers of states (e.g. LSTM and GRU), where Keras' "
                                   "symbolic and real outputs disagree; use layers of one class")
        # Keras forces this in Bidirectional.__init__ (force_zero_output_for_mask)
        for sub in (self.forward_layer, self.backward_layer):
            sub.zero_output_for_mask = sub.return_sequences

    @property
    def n_merged(self):
        """How many outputs the merge gives: 1, or 2 with merge_mode None."""
        return 2 if self.merge_mode is None else 1

    @property
    def n_outputs(self):
        """The merged output(s), then with ``return_state`` both layers' states."""
        states = self.forward_layer.n_states() + self.backward_layer.n_states() if self.return_state else 0
        return self.n_merged + states

    def _outputs(self, y, y_rev):
        """Keras' result from the two layers' results (each ``(output, *states)`` with
        ``return_state``): one array, or the tuple of several outputs."""
        states = ()
        if self.return_state:
            (y, *s), (y_rev, *s_rev) = y, y_rev
            states = tuple(s) + tuple(s_rev)
        out = self._merge(y, y_rev)
        if self.n_outputs == 1:
            return out
        return (out if self.merge_mode is None else (out,)) + states

    def forward(self, x, mask=None):
        return self._outputs(self.forward_layer.forward(x, mask), self.backward_layer.forward(x, mask))

    def forward_train(self, x, mask, ctx):
        y = self.forward_layer.forward_train(x, mask, ctx)
        y_rev = self.backward_layer.forward_train(x, mask, ctx)
        # the two layers' outputs (not their states), backward's in processing order
        self._saved = (y[0], y_rev[0]) if self.return_state else (y, y_rev)
        return self._outputs(y, y_rev)

    def backward(self, dy, need_dx=True):
        """Split dy: the merged output's gradient by the merge mode (concat: the two halves;
        sum: dy, dy; ave: dy/2, dy/2; mul: dy * other; None: each output's own), the
        states' to their layer; flip the backward half back to processing order, run both
        layers' backward; dx = dx_fwd + dx_bwd; grads = forward's then backward's. A
        gradient of None (that output unused) is zero."""
        y, y_rev = self._saved
        dys = list(dy) if self.n_outputs > 1 else [dy]
        d_main, d_states = dys[:self.n_merged], dys[self.n_merged:]
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        if self.merge_mode is None:
            d, d_rev = d_main
        elif d_main[0] is None:
            d = d_rev = None
        elif self.merge_mode == "concat":
            u = y.shape[-1]
            d, d_rev = d_main[0][..., :u], d_main[0][..., u:]
        elif self.merge_mode == "sum":
            d = d_rev = d_main[0]
        elif self.merge_mode == "ave":
            d = d_rev = d_main[0] / 2.0
        else:
            d, d_rev = d_main[0] * y_rev, d_main[0] * y
        if self.return_sequences and d_rev is not None:
            d_rev = d_rev[:, ::-1]
        k = self.forward_layer.n_states()
        dx, grads = self.forward_layer.backward(self._layer_dy(d, d_states[:k], y), need_dx)
        dx_rev, grads_rev = self.backward_layer.backward(self._layer_dy(d_rev, d_states[k:], y_rev),
                                                         need_dx)
        return (dx + dx_rev if need_dx else None), grads + grads_rev

    def _layer_dy(self, d, d_states, y):
        """One layer's ``dy``: its output's gradient (zeros when unused), with
        ``return_state`` followed by its states' (None: unused; the layer reads it so)."""
        if self.return_state:
            return [None if d is None else np.ascontiguousarray(d)] + list(d_states)
        return np.zeros_like(y) if d is None else np.ascontiguousarray(d)

    def _can_fuse(self):
        """Whether fused_bidirectional_scan covers this layer (else: two scans)."""
        f, b = self.forward_layer, self.backward_layer
        if type(f) is not type(b) or type(f) not in (SimpleRNN, LSTM):
            return False
        if f.go_backwards or not b.go_backwards or f.units != b.units or f.return_state:
            return False
        if f.return_sequences != b.return_sequences:
            return False
        if f.zero_output_for_mask != f.return_sequences or b.zero_output_for_mask != b.return_sequences:
            return False
        if isinstance(f, LSTM):  # the gate maths is shared, so must be the activations
            return (f.tanh_sigmoid == b.tanh_sigmoid
                    and (f.tanh_sigmoid or (f.act is b.act and f.ract is b.ract)))
        return f.act is b.act

    def forward_ids(self, ids, mask, embeddings):
        """Bidirectional over an Embedding folded into both input projections.
        SimpleRNN/LSTM: both directions in one time loop (half the per-step NumPy
        calls); anything else: two separate scans.

        Padding scattered inside rows is compacted first: a masked step leaves the
        state unchanged in both directions, so each direction sees exactly the row's
        valid tokens in order (forward) or reverse order (backward), i.e. the
        post-padded row of those tokens. Outputs at masked positions are zero (Keras
        forces ``zero_output_for_mask`` under Bidirectional), so the compacted
        outputs scatter back to the valid positions and zeros elsewhere."""
        if self._can_fuse() and ids.ndim == 2 and ids.shape[1] > 0:
            positions = None
            if mask is None:
                order, lengths = None, np.full(ids.shape[0], ids.shape[1])
            else:
                order, lengths = post_padding_order(mask)
                if lengths is None:
                    # valid positions first, each row in time order (stable sort)
                    positions = np.argsort(~mask, axis=1, kind="stable")
                    ids = np.take_along_axis(ids, positions, axis=1)
                    order, lengths = post_padding_order(np.take_along_axis(mask, positions, axis=1))
            if order is not None:
                ids = ids[order]
            table = self._fused_table(embeddings)
            y, y_rev = fused_bidirectional_scan(self.forward_layer, self.backward_layer,
                                                ids, lengths, table)
            if order is not None:
                y, y_rev = _unsort(y, order), _unsort(y_rev, order)
            if self.return_sequences:
                if positions is not None:  # compacted position j -> input position positions[:, j]
                    y, y_rev = _scatter_time(y, positions), _scatter_time(y_rev, positions)
                y_rev = y_rev[:, ::-1]  # _merge expects the backward output reversed
            return self._outputs(y, y_rev)
        return self._outputs(self.forward_layer.forward_ids(ids, mask, embeddings),
                             self.backward_layer.forward_ids(ids, mask, embeddings))

    def _fused_table(self, embeddings):
        """(2V, G) stacked projection tables [forward; backward] (cached)."""
        key = id(embeddings)
        cached = getattr(self, "_table2", None)
        if cached is None or cached[0] != key:
            self._table2 = (key, np.concatenate([
                self.forward_layer.projection_table(embeddings),
                self.backward_layer.projection_table(embeddings)]))
        return self._table2[1]

    def _merge(self, y, y_rev):
        if self.return_sequences:
            y_rev = y_rev[:, ::-1]
        if self.merge_mode is None:
            return (y, y_rev)
        if self.merge_mode == "concat":
            return np.concatenate([y, y_rev], axis=-1)
        if self.merge_mode == "sum":
            return y + y_rev
        if self.merge_mode == "ave":
            return (y + y_rev) / 2.0
        return y * y_rev

    def compute_mask(self, x, mask):
        """Keras: the input mask on each (merged) output if ``return_sequences``; the
        states have none."""
        out = mask if self.return_sequences else None
        if self.n_outputs == 1:
            return out
        return (out,) * self.n_merged + (None,) * (self.n_outputs - self.n_merged)
