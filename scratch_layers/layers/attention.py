"""Attention layers (forward and backward).

* :class:`~scratch_layers.layers.einsum_dense.EinsumDense` makes the four (five with
  ``use_gate``) projections inside :class:`MultiHeadAttention`.
* :class:`MultiHeadAttention` (a :class:`~scratch_layers.layers.layer.MultiInputLayer`): Keras'
  ``mha(query, value, key=None, attention_mask=None, use_causal_mask=False)``.
* :class:`Attention` (Luong, ``score_mode`` 'dot'/'concat') and :class:`AdditiveAttention`
  (Bahdanau), called as ``layer([query, value])`` or ``layer([query, value, key])``.

Each follows Keras 3.15's own code (``keras/src/layers/attention/*.py``,
``layers/core/einsum_dense.py``, ``layers/rnn/time_distributed.py``) and the TensorFlow
backend's ``dot_product_attention``, including the constants used for masked scores.
"""
import math

import numpy as np

from .. import activations
from ..errors import InputError, ModelFileError, UnsupportedLayerError
from .einsum_dense import sub_einsum
from .layer import MultiInputLayer, is_tensor

# ----------------------------------------------------------------------------- helpers

_TF_LARGE_NEGATIVE = 3.38953e38 * -0.7   # backend/tensorflow/nn.py::_get_large_negative
_SOFTMAX_LARGE_NEGATIVE = -1e9           # layers/activations/softmax.py (non-float16)


def _causal(t, s):
    """(T, S) lower-triangular bool: query i sees keys j <= i (Keras' cumsum comparison)."""
    return np.arange(t)[:, None] >= np.arange(s)[None, :]


def _bind(names, args, kwargs, where):
    """Keras' call signature binding: positional args, then keyword args."""
    if len(args) > len(names):
        raise ModelFileError(f"{where}: called with {len(args)} positional arguments")
    bound = dict(zip(names, args))
    for k, v in kwargs.items():
        if k in bound:
            raise ModelFileError(f"{where}: argument '{k}' given twice")
        bound[k] = v
    return bound


def _constant_mask(value, where):
    """An attention mask stored in the config as a constant (``__tensor__``), or None."""
    if isinstance(value, dict) and value.get("class_name") == "__tensor__":
        value = (value.get("config") or {}).get("value")
    if value is None:
        return None
    try:
        return np.asarray(value).astype(bool)
    except (TypeError, ValueError):
        raise ModelFileError(f"{where}: attention_mask {str(value)[:80]!r} is not a tensor") from None


def _refuse_training_dropout(layer, rate, ctx):
    if ctx.training and rate > 0:
        raise layer.no_backward(f"with dropout={rate} in training mode (its dropout mask is "
                                "not reproduced; use training=False)")


# ----------------------------------------------------------------------------- MHA


class MultiHeadAttention(MultiInputLayer):
    """Keras ``MultiHeadAttention`` on rank-3 inputs (B, T, dim), default attention axes.

    Forward (N heads, key_dim H, value_dim V)::

        q = einsum("abc,cde->abde", query, Wq) + bq        (B, T, N, H)
        k = einsum(key,   Wk) + bk,  v = einsum(value, Wv) + bv   (B, S, N, H / V)
        l = einsum("BTNH,BSNH->BNTS", q, k) * c,  c = float32(1 / sqrt(H)) (Keras' rounding)
        p = softmax(where(mask, l, -0.7 * 3.38953e38))      (TF dot_product_attention:
            a fully masked row is uniform)  -- or, with dropout > 0, Keras' Softmax layer:
            p = where(mask, softmax(where(mask, l, -1e9)), 0) (a fully masked row is 0)
        o = einsum("BNTS,BSNH->BTNH", p, v)
        y = einsum("abcd,cde->abe", o, Wo) + bo              (o * sigmoid gate with use_gate)

    mask (B, T, S) = attention_mask & query_mask[:, :, None] & value_mask[:, None, :]
    & key_mask[:, None, :] & causal & sliding window (those present), broadcast over heads.

    Backward::

        do = einsum(dy, Wo^T);  dp = einsum("BTNH,BSNH->BNTS", do, v);  dv = einsum(p, do)
        dl = p (dp - sum(dp p)) * mask      (no gradient reaches a masked score)
        dq = c einsum(dl, k);  dk = c einsum(dl, q)
        then each projection's EinsumDense backward (dW, db, d input).

    Weights arrive in ``.keras`` loader order (sub-groups alphabetically): ``[gate_dense,]
    key_dense, output_dense, query_dense, value_dense``, each kernel then bias.
    :attr:`keras_order` maps that to Keras' ``layer.weights`` order (query, key,
    [gate,] value, output), which is the legacy ``.h5`` order.
    """

    supports_masking = True
    CALL_ARGS = ("query", "value", "key", "query_mask", "value_mask", "key_mask",
                 "attention_mask", "return_attention_scores", "training", "use_causal_mask")

    @staticmethod
    def _dims(config):
        heads, key_dim = int(config["num_heads"]), int(config["key_dim"])
        value_dim = int(config.get("value_dim") or key_dim)
        out = config.get("output_shape")
        out = None if not out else ([int(out)] if isinstance(out, int) else [int(o) for o in out])
        return heads, key_dim, value_dim, out

    @classmethod
    def _kv_heads(cls, config):
        """Heads of the key and value projections (all of them here; fewer in GQA)."""
        return cls._dims(config)[0]

    @classmethod
    def _groups(cls, config):
        return sorted(["query_dense", "key_dense", "value_dense", "output_dense"]
                      + (["gate_dense"] if config.get("use_gate") else []))  # file: _gate_dense, first

    @classmethod
    def weight_shapes(cls, config):
        """Per group (loader order): kernel (dim_in, heads, key/value_dim) or, for the
        output, (heads, value_dim, *output_shape); bias without the first kernel axis.
        The input widths are symbols (query's also sizes the default output)."""
        n, h, v, out = cls._dims(config)
        kv = cls._kv_heads(config)
        out = tuple(out) if out else ("mha_query_dim",)
        kernels = {"query_dense": ("mha_query_dim", n, h), "key_dense": ("mha_key_dim", kv, h),
                   "value_dense": ("mha_value_dim", kv, v), "gate_dense": ("mha_query_dim", n, v),
                   "output_dense": (n, v) + out}
        bias = config.get("use_bias", True)
        shapes = []
        for g in cls._groups(config):
            k = kernels[g]
            shapes.append(k)
            if bias:
                shapes.append(out if g == "output_dense" else k[1:])
        return shapes

    def __init__(self, config, weights, class_name=None):
        self.use_bias = bool(config.get("use_bias", True))
        groups = self._groups(config)
        per = 2 if self.use_bias else 1
        self.n_weights = per * len(groups)
        super().__init__(config, weights, class_name)
        self.heads, self.key_dim, self.value_dim, self.out_shape = self._dims(config)
        axes = config.get("attention_axes")
        if isinstance(axes, int):
            axes = [axes]
        if axes is not None and [int(a) for a in axes] not in ([1], [-2]):
            raise self.unsupported("attention_axes", axes, "only the default (the sequence "
                                   "axis of rank-3 inputs) is supported")
        if config.get("flash_attention"):
            raise self.unsupported("flash_attention", True)
        sw = config.get("sliding_window")
        self.sliding_window = None if sw is None else int(sw)
        self.dropout = float(config.get("dropout", 0.0) or 0.0)
        self.use_gate = bool(config.get("use_gate", False))
        # Keras passes the Python float 1/sqrt(key_dim) to tf.cast, which first makes a
        # float32 tensor of it: the float64 twin scales by the float32-rounded value too.
        self.scale = float(np.float32(1.0 / math.sqrt(float(self.key_dim))))
        w = {g: weights[i * per:(i + 1) * per] for i, g in enumerate(groups)}
        bias = "de" if self.use_bias else None
        n, h, v = self.heads, self.key_dim, self.value_dim
        kv = self.kv_heads = self._kv_heads(config)
        if kv < 1 or n % kv:
            raise ModelFileError(f"{self.class_name} layer '{self.name}': {n} query heads are not a "
                                 f"multiple of {kv} key/value heads")
        self.query_dense = sub_einsum("query", "abc,cde->abde", [None, n, h], bias, w["query_dense"])
        self.key_dense = sub_einsum("key", "abc,cde->abde", [None, kv, h], bias, w["key_dense"])
        self.value_dense = sub_einsum("value", "abc,cde->abde", [None, kv, v], bias, w["value_dense"])
        self.gate_dense = (sub_einsum("gate", "abc,cde->abde", [None, n, v], bias,
                                       w["gate_dense"], "sigmoid") if self.use_gate else None)
        k_out = w["output_dense"][0]
        if k_out.ndim < 3:
            raise ModelFileError(f"{self.class_name} layer '{self.name}': output kernel of shape "
                                 f"{k_out.shape}; expected (heads, value_dim, ...)")
        n_out = k_out.ndim - 2
        letters = "efghijklmnop"[:n_out]
        self.output_dense = sub_einsum(
            "attention_output", f"abcd,cd{letters}->ab{letters}", [None] + list(k_out.shape[2:]),
            letters if self.use_bias else None, w["output_dense"])
        self.keras_order = self.keras_order_of(config)

    def sublayers(self):
        return [d for d in (self.query_dense, self.key_dense, self.value_dense, self.gate_dense,
                            self.output_dense) if d is not None]

    @classmethod
    def keras_order_of(cls, config):
        """Loader-order index of each weight in Keras' ``layer.weights`` order (query, key,
        [gate], value, output): a legacy .h5 stores them in Keras' order."""
        groups = cls._groups(config)
        per = 2 if bool(config.get("use_bias", True)) else 1
        keras_groups = ["query_dense", "key_dense"] + (["gate_dense"] if bool(config.get("use_gate", False))
                                                       else []) + ["value_dense", "output_dense"]
        return [groups.index(g) * per + j for g in keras_groups for j in range(per)]

    # call interface ------------------------------------------------------
    def split_call(self, args, kwargs):
        """``mha(query, value, key=None, ..., attention_mask=None, use_causal_mask=False)``
        -> ``[query, value, key, attention_mask]`` (None where absent) and
        ``{"use_causal_mask": bool}`` (+ ``"constant_attention_mask"`` when the mask is a
        constant stored in the config). The query/value/key masks are the inputs' own
        Keras masks (an explicit ``query_mask`` is ignored, as Keras ignores it)."""
        where = f"{self.class_name} layer '{self.name}'"
        b = _bind(self.CALL_ARGS, args, kwargs, where)
        unknown = set(b) - set(self.CALL_ARGS)
        if unknown:
            raise UnsupportedLayerError(f"{where}: unknown call arguments {sorted(unknown)}")
        if b.get("return_attention_scores"):
            raise UnsupportedLayerError(f"{where}: return_attention_scores=True (two outputs) "
                                        "is not supported")
        for k in ("value_mask", "key_mask"):
            if b.get(k) is not None:
                raise UnsupportedLayerError(f"{where}: an explicit {k} is not supported (the "
                                            "masks of value/key tensors are)")
        if not is_tensor(b.get("query")) or not is_tensor(b.get("value")):
            raise ModelFileError(f"{where}: query and value must be tensors")
        key = b.get("key")
        if key is not None and not is_tensor(key):
            raise ModelFileError(f"{where}: key must be a tensor")
        am = b.get("attention_mask")
        options = {"use_causal_mask": bool(b.get("use_causal_mask", False))}
        if am is not None and not is_tensor(am):
            options["constant_attention_mask"] = _constant_mask(am, where)
            am = None
        return [b["query"], b["value"], key, am], options

    def compute_mask(self, xs, masks, **options):
        """Keras sets the query's mask on the output."""
        return masks[0] if masks else None

    # maths ------------------------------------------------------------------
    def _attention_mask(self, xs, masks, use_causal_mask, constant_attention_mask):
        """Keras' ``call`` + ``_compute_attention_mask``: (B or 1, T, S) bool or None."""
        query, value = xs[0], xs[1]
        t, s = query.shape[1], value.shape[1]
        qm, vm = masks[0], masks[1]
        km = masks[2] if xs[2] is not None else None   # no key tensor: no key mask
        am = xs[3] if xs[3] is not None else constant_attention_mask
        auto = None

        def conj(a, b):
            return b if a is None else a & b
        if qm is not None:
            auto = np.asarray(qm, bool)[:, :, None]
        if vm is not None:
            auto = conj(auto, np.asarray(vm, bool)[:, None, :])
        if km is not None:
            auto = conj(auto, np.asarray(km, bool)[:, None, :])
        if use_causal_mask:
            auto = conj(auto, _causal(t, s)[None])
        if self.sliding_window is not None:
            band = np.abs(np.arange(t)[:, None] - np.arange(s)[None, :]) < self.sliding_window
            auto = conj(auto, band[None])
        if am is not None:
            am = np.asarray(am)
            am = am.astype(bool) if am.dtype != bool else am
            auto = am if auto is None else am & auto
        return auto

    def _check(self, xs):
        where = f"{self.class_name} layer '{self.name}'"
        if len(xs) != 4:
            raise InputError(f"{where}: expected [query, value, key, attention_mask], got "
                             f"{len(xs)} inputs")
        for i, x in enumerate(xs[:3]):
            if x is not None and np.ndim(x) != 3:
                raise UnsupportedLayerError(f"{where}: input {i} has shape {np.shape(x)}; only "
                                            "rank-3 (batch, sequence, features) inputs are supported")
        if xs[0] is None or xs[1] is None:
            raise InputError(f"{where}: query and value are required")
        if xs[2] is not None and xs[2].shape[1] != xs[1].shape[1]:
            raise InputError(f"{where}: key length {xs[2].shape[1]} != value length "
                             f"{xs[1].shape[1]}")

    def _run(self, xs, masks, use_causal_mask, constant_attention_mask, train, ctx=None):
        self._check(xs)
        masks = list(masks) if masks is not None else [None] * 4
        masks += [None] * (4 - len(masks))
        query, value = xs[0], xs[1]
        key = value if xs[2] is None else xs[2]
        mask = self._attention_mask(xs, masks, use_causal_mask, constant_attention_mask)
        proj = (lambda lay, x: lay.forward_train(x, None, ctx)) if train else \
            (lambda lay, x: lay.forward(x))
        gate = proj(self.gate_dense, query) if self.use_gate else None
        q = proj(self.query_dense, query)
        k = self._repeat_heads(proj(self.key_dense, key))
        v = self._repeat_heads(proj(self.value_dense, value))
        dt = q.dtype
        m4 = mask
        while m4 is not None and m4.ndim < 4:   # Keras expands at the heads axis (-3)
            m4 = np.expand_dims(m4, -3)        # (B|1, 1, T, S)
        if self.dropout == 0.0:
            # TF dot_product_attention: scale after the dot product, large negative fill
            logits = np.einsum("btnh,bsnh->bnts", q, k, optimize=True) * dt.type(self.scale)
            if m4 is not None:
                logits = np.where(m4, logits, np.asarray(_TF_LARGE_NEGATIVE, dt))
            p = activations.softmax(logits, axis=-1)
        else:
            # _masked_softmax: query scaled first, Softmax layer's -1e9 fill and zeroing
            logits = np.einsum("bsnh,btnh->bnts", k, q * dt.type(self.scale), optimize=True)
            if m4 is not None:
                logits = np.where(m4, logits, dt.type(_SOFTMAX_LARGE_NEGATIVE))
            p = activations.softmax(logits, axis=-1)
            if m4 is not None:
                p = np.where(m4, p, dt.type(0.0))
        o = np.einsum("bnts,bsnh->btnh", p, v, optimize=True)
        if self.use_gate:
            o_in = o * gate
        else:
            o_in = o
        y = self.output_dense.forward_train(o_in, None, ctx) if train else self.output_dense.forward(o_in)
        if train:
            self._saved = (q, k, v, p, m4, o, gate, xs[2] is None)
        return y

    def _repeat_heads(self, a):
        """(B, S, kv, H) -> (B, S, heads, H), each key/value head repeated heads/kv times in
        a row (``ops.repeat(key, heads // kv, axis=2)``); the identity for MHA."""
        r = self.heads // self.kv_heads
        return a if r == 1 else np.repeat(a, r, axis=2)

    def _sum_heads(self, d):
        """The adjoint of :meth:`_repeat_heads`: the gradients of a head's copies add up."""
        r = self.heads // self.kv_heads
        return d if r == 1 else d.reshape(d.shape[:2] + (self.kv_heads, r) + d.shape[3:]).sum(axis=3)

    def forward(self, xs, masks=None, use_causal_mask=False, constant_attention_mask=None):
        return self._run(xs, masks, use_causal_mask, constant_attention_mask, False)

    def forward_train(self, xs, masks, ctx, use_causal_mask=False, constant_attention_mask=None):
        _refuse_training_dropout(self, self.dropout, ctx)
        return self._run(xs, masks, use_causal_mask, constant_attention_mask, True, ctx)

    def backward(self, dy, need_dx=True):
        """-> ([dquery, dvalue, dkey, None], grads in loader order); see the class docstring."""
        q, k, v, p, m4, o, gate, key_is_value = self._saved
        grads = {}
        do_in, grads["output_dense"] = self.output_dense.backward(dy)
        if self.use_gate:
            do = do_in * gate
            dgate = do_in * o
        else:
            do = do_in
        dv = np.einsum("bnts,btnh->bsnh", p, do, optimize=True)
        dp = np.einsum("btnh,bsnh->bnts", do, v, optimize=True)
        dl = activations.softmax_grad(None, p, dp)
        if m4 is not None:
            dl = np.where(m4, dl, 0.0)
        dl = dl * q.dtype.type(self.scale)
        dq = np.einsum("bnts,bsnh->btnh", dl, k, optimize=True)
        dk = self._sum_heads(np.einsum("bnts,btnh->bsnh", dl, q, optimize=True))
        dv = self._sum_heads(dv)
        dquery, grads["query_dense"] = self.query_dense.backward(dq, need_dx)
        dkey, grads["key_dense"] = self.key_dense.backward(dk, need_dx)
        dvalue, grads["value_dense"] = self.value_dense.backward(dv, need_dx)
        if self.use_gate:
            dgq, grads["gate_dense"] = self.gate_dense.backward(dgate, need_dx)
            if need_dx:
                dquery = dquery + dgq
        flat = [g for name in self._groups(self.config) for g in grads[name]]
        if not need_dx:
            return [None] * 4, flat
        if key_is_value:
            dvalue, dkey = dvalue + dkey, None
        return [dquery, dvalue, dkey, None], flat


class GroupQueryAttention(MultiHeadAttention):
    """Keras ``GroupQueryAttention`` (``keras/src/layers/attention/grouped_query_attention.py``):
    MultiHeadAttention whose key and value projections have ``num_key_value_heads`` heads
    (kv), each repeated heads/kv times in a row to meet the ``num_query_heads`` query heads
    (``ops.repeat(key, heads // kv, axis=2)``). Then the same attention as MHA (one copy of
    it: TF's ``dot_product_attention``, or with dropout > 0 the Softmax layer's path, the
    scale 1/sqrt(head_dim) rounded to float32, the same masks, causal and sliding window).
    The output projection maps back to the query's feature size. Backward: MHA's, with
    the gradients of a key/value head's copies summed.

    Projections: query ``bqm,muh->bquh``, key/value ``bkm,mvh->bkvh`` (kernel (dim, kv,
    head_dim)), output ``bquh,uhm->bqm``, gate (``use_gate``) like the query with sigmoid;
    the same weight groups, file order and Keras order as MultiHeadAttention."""

    python_class_name = "GroupedQueryAttention"  # Keras' class (and weight group) name

    @staticmethod
    def _dims(config):
        heads, head_dim = int(config["num_query_heads"]), int(config["head_dim"])
        return heads, head_dim, head_dim, None

    @classmethod
    def _kv_heads(cls, config):
        return int(config["num_key_value_heads"])


# ----------------------------------------------------------------------------- Luong/Bahdanau


class Attention(MultiInputLayer):
    """Keras ``Attention`` (Luong): ``layer([query, value(, key)], use_causal_mask=...)``.

    Forward (key = value when absent; s = scale, w = concat_score_weight)::

        'dot':    e = s * (q @ k^T)                             (B, Tq, Tv)
        'concat': e = w * sum_d tanh(s * (q[:, :, None] + k[:, None]))
        e = where(mask, e, e - 1e9)     mask = value_mask[:, None, :] & causal
        a = softmax(e);  y = (a @ v) * query_mask[..., None]

    Backward::

        dy' = dy * query_mask;  dv = a^T @ dy';  da = dy' @ v^T
        de = a (da - sum(da a))            (the -1e9 shift passes the gradient)
        'dot':    ds = sum(de * q k^T);  dq = s de @ k;  dk = s de^T @ q
        'concat': t = tanh(s u), u = q + k: dw = sum(de * sum_d t);
                  du = w de (1 - t^2) s;  ds = sum(w de (1 - t^2) u);
                  dq = sum over keys of du, dk = sum over queries of du
    """

    supports_masking = True
    has_concat = True

    @classmethod
    def weight_shapes(cls, config):
        """[scale ()] [concat_score_weight ()]."""
        return [()] * (int(bool(config.get("use_scale", False)))
                       + int(config.get("score_mode", "dot") == "concat"))

    def __init__(self, config, weights, class_name=None):
        self.use_scale = bool(config.get("use_scale", self.default_use_scale()))
        self.score_mode = config.get("score_mode", "dot") if self.has_concat else "additive"
        if self.has_concat and self.score_mode not in ("dot", "concat"):
            raise UnsupportedLayerError(f"{class_name or type(self).__name__} layer "
                                        f"'{config.get('name')}': score_mode={self.score_mode!r}")
        self.n_weights = int(self.use_scale) + int(self.score_mode == "concat")
        super().__init__(config, weights, class_name)
        self.dropout = float(config.get("dropout", 0.0) or 0.0)
        w = list(weights)
        self.scale = w.pop(0) if self.use_scale else None
        self.concat_w = w.pop(0) if self.score_mode == "concat" else None

    @staticmethod
    def default_use_scale():
        return False

    def split_call(self, args, kwargs):
        """``layer([query, value(, key)], mask=..., use_causal_mask=...)`` -> the 2 or 3
        tensors and ``{"use_causal_mask": bool}``. The ``mask`` kwarg Keras may record is
        the inputs' own masks, which the executor propagates."""
        where = f"{self.class_name} layer '{self.name}'"
        b = _bind(("inputs", "mask", "training", "return_attention_scores", "use_causal_mask"),
                  args, kwargs, where)
        if b.get("return_attention_scores"):
            raise UnsupportedLayerError(f"{where}: return_attention_scores=True (two outputs) "
                                        "is not supported")
        inputs = b.get("inputs")
        if not isinstance(inputs, (list, tuple)) or len(inputs) not in (2, 3) \
                or not all(is_tensor(t) for t in inputs):
            raise ModelFileError(f"{where}: expected to be called on [query, value] or "
                                 f"[query, value, key], got {str(inputs)[:120]}")
        return list(inputs), {"use_causal_mask": bool(b.get("use_causal_mask", False))}

    def compute_mask(self, xs, masks, **options):
        """Keras: the query's mask."""
        return masks[0] if masks else None

    def _scores(self, q, k):
        dt = q.dtype
        if self.score_mode == "dot":
            e = np.matmul(q, np.swapaxes(k, -1, -2))
            if self.scale is not None:
                e = e * self.scale
            return e, None
        u = q[:, :, None, :] + k[:, None, :, :]
        if self.score_mode == "concat":   # w * sum_d tanh(s u)
            t = np.tanh(u * self.scale if self.scale is not None else u)
            return self.concat_w * np.sum(t, axis=-1), (u, t)
        t = np.tanh(u)                    # additive: sum_d scale_d tanh(u)
        return np.sum((self.scale if self.scale is not None else dt.type(1.0)) * t, axis=-1), (u, t)

    def _run(self, xs, masks, use_causal_mask, train):
        where = f"{self.class_name} layer '{self.name}'"
        if len(xs) not in (2, 3) or any(x is None or np.ndim(x) != 3 for x in xs):
            raise InputError(f"{where}: expected [query, value(, key)] of rank 3, got shapes "
                             f"{[np.shape(x) for x in xs]}")
        q, v = xs[0], xs[1]
        k = xs[2] if len(xs) == 3 else v
        masks = list(masks) if masks is not None else [None] * len(xs)
        qm = masks[0] if masks else None
        vm = masks[1] if len(masks) > 1 else None
        e, cache = self._scores(q, k)
        smask = None
        if use_causal_mask:
            smask = _causal(e.shape[-2], e.shape[-1])[None]
            if vm is not None:
                smask = np.asarray(vm, bool)[:, None, :] & smask
        elif vm is not None:
            smask = np.asarray(vm, bool)
            smask = smask[:, None, :] if smask.ndim == 2 else smask
        if smask is not None:
            e = np.where(smask, e, e - e.dtype.type(1e9))
        a = activations.softmax(e, axis=-1)
        y = np.matmul(a, v)
        qkeep = None
        if qm is not None:
            qkeep = np.asarray(qm, bool)[..., None]
            y = np.where(qkeep, y, y.dtype.type(0.0))
        if train:
            self._saved = (q, k, v, a, cache, qkeep, len(xs) == 3)
        return y

    def forward(self, xs, masks=None, use_causal_mask=False):
        return self._run(xs, masks, use_causal_mask, False)

    def forward_train(self, xs, masks, ctx, use_causal_mask=False):
        _refuse_training_dropout(self, self.dropout, ctx)
        return self._run(xs, masks, use_causal_mask, True)

    def backward(self, dy, need_dx=True):
        """-> ([dquery, dvalue(, dkey)], [dscale][, dconcat_weight]); see the docstring."""
        q, k, v, a, cache, qkeep, has_key = self._saved
        if qkeep is not None:
            dy = np.where(qkeep, dy, 0.0)
        dv = np.matmul(np.swapaxes(a, -1, -2), dy)
        da = np.matmul(dy, np.swapaxes(v, -1, -2))
        de = activations.softmax_grad(None, a, da)
        grads = []
        if self.score_mode == "dot":
            if self.scale is not None:
                qk = np.matmul(q, np.swapaxes(k, -1, -2))
                grads.append(np.asarray(np.sum(de * qk), dtype=q.dtype))
                de = de * self.scale
            dq = np.matmul(de, k)
            dk = np.matmul(np.swapaxes(de, -1, -2), q)
        else:
            u, t = cache
            if self.score_mode == "concat":   # e = w sum_d tanh(s u)
                grads_w = np.asarray(np.sum(de * np.sum(t, axis=-1)), dtype=q.dtype)
                dsu = (de * self.concat_w)[..., None] * (1.0 - t * t)
                if self.scale is not None:
                    grads.append(np.asarray(np.sum(dsu * u), dtype=q.dtype))
                    du = dsu * self.scale
                else:
                    du = dsu
                grads.append(grads_w)
            else:                             # e = sum_d scale_d tanh(u)
                if self.scale is not None:
                    grads.append(np.einsum("bqk,bqkd->d", de, t))
                    du = de[..., None] * self.scale * (1.0 - t * t)
                else:
                    du = de[..., None] * (1.0 - t * t)
            dq = du.sum(axis=2)
            dk = du.sum(axis=1)
        if not need_dx:
            return [None] * (3 if has_key else 2), grads
        if has_key:
            return [dq, dv, dk], grads
        return [dq, dv + dk], grads


class AdditiveAttention(Attention):
    """Keras ``AdditiveAttention`` (Bahdanau): e = sum_d scale_d tanh(q + k) (scale a
    (dim,) vector, or 1 without ``use_scale``); masking, softmax and the query mask as
    :class:`Attention`. Backward: with t = tanh(q[:, :, None] + k[:, None]),
    dscale = sum(de t) over batch/queries/keys; du = de scale (1 - t^2); dq = sum over
    keys of du, dk = sum over queries of du."""

    has_concat = False

    @classmethod
    def weight_shapes(cls, config):
        """[scale (dim,)]."""
        return [("additive_dim",)] if config.get("use_scale", True) else []

    @staticmethod
    def default_use_scale():
        return True
