"""Recurrent layers: SimpleRNN, LSTM and GRU (Bidirectional, in :mod:`.wrappers`, uses the
scans below).

Design: every layer first computes the input projection ``x @ kernel (+ bias)``
for all timesteps in ONE matmul (time-major, shape (T, N, G)). A cell *step
function* then advances the state by one timestep from that projection, and ONE
generic :func:`masked_scan` loops over time for all cell types. Bidirectional
runs two scans, except over a folded Embedding with post-padded input, where
:func:`fused_bidirectional_scan` runs both SimpleRNN/LSTM directions in one loop.

Training (backpropagation through time): the same :func:`masked_scan`, given a
:class:`ScanTape`, records each step's cell values; :func:`masked_scan_backward` walks
the steps in reverse with each cell's *step-backward* function (one matmul per step for
the recurrent gradient), and the kernel gradients are then one matmul over all
timesteps (see :meth:`RNNBase.backward`).

Masking follows ``keras/src/backend/tensorflow/rnn.py`` (the while-loop path):
at a masked step the state is carried over unchanged, and the output is either
the previous output (``zero_output_for_mask=False``, the default of a plain RNN
layer) or zeros (``zero_output_for_mask=True``, which Bidirectional forces when
``return_sequences=True``). The previous output before the first step is zeros,
so a row that is entirely padding outputs zeros. The last output of the layer is
the (masked) output of the last processed step.
"""
import numpy as np

from .. import activations
from ..blas import blas_threads
from ..errors import ModelFileError
from .layer import Layer

# ---------------------------------------------------------------------------
# cell step functions: (xp_t, states, cell, saved=None) -> (output, new_states)
# xp_t is the precomputed input projection of one timestep, shape (N, G).
# When ``saved`` is a list (training), the step appends what its step-backward needs.
# Step-backward functions: (dstates, h_prev, saved, cell) -> (da_x, da_m, dstates_prev)
# with da_x = dL/d(xp_t) and da_m = dL/d(recurrent pre-activation), both in Keras
# column order, and dstates_prev = dL/d(states_{t-1}) (including da_m U^T).
# ---------------------------------------------------------------------------

def simple_rnn_step(xp_t, states, cell, saved=None):
    """h_t = act(x_t W + b + h_{t-1} U); output = new state = h_t."""
    z = states[0] @ cell.recurrent_kernel
    z += xp_t
    h = _fast_tanh(z, out=z) if cell.act is _fast_tanh else cell.act(z)
    if saved is not None:
        saved.append(h)
    return h, (h,)


def simple_rnn_step_backward(dstates, h_prev, h, cell):
    """da = dh * act'(h);  dh_{t-1} = da U^T."""
    act_d, _ = cell.derivatives()
    da = dstates[0] * act_d(h)
    return da, da, (da @ cell.weights[1].T,)


def lstm_update(z, c, cell, h_out=None):
    """The LSTM gate maths, the one copy used by every scan.  Keras gates i, f, c, o:
    i = ract(z_i), f = ract(z_f), o = ract(z_o);  c_t = f * c_{t-1} + i * act(z_c);
    h_t = o * act(c_t).  ``z`` (..., 4u) holds the pre-activations x_t W + b + h_{t-1} U
    and is overwritten; ``c`` (..., u) holds c_{t-1} and is updated in place to c_t.
    Returns h_t (written into ``h_out`` when given). On return ``z`` holds the gate
    values i, f, o, g = act(z_c) (read by the backward pass).
    (The LSTM layer stores its weight columns reordered as i, f, o, c so the three
    recurrent-activation gates are one contiguous slice: one ufunc call.)"""
    u = cell.units
    if cell.tanh_sigmoid:
        # default activations: sigmoid(a) = 1 / (1 + exp(-a)), tanh(a) = 2 sigmoid(2a) - 1.
        # The weight columns were pre-scaled by -1 (i, f, o) and -2 (c), exact in
        # binary, so z already holds -a and ONE exp pass gives all four gates
        # (np.exp is SIMD-vectorised, np.tanh ~3x slower here).
        np.exp(z, out=z)
        z += 1.0
        np.reciprocal(z, out=z)
        g = z[..., 3 * u:]
        g *= 2.0
        g -= 1.0                      # g = act(z_c)
    else:
        z[..., :3 * u] = cell.ract(z[..., :3 * u])
        z[..., 3 * u:] = cell.act(z[..., 3 * u:])
    ig = np.multiply(z[..., 3 * u:], z[..., :u], out=h_out)   # i * act(z_c)
    c *= z[..., u:2 * u]              # f * c_{t-1}
    c += ig
    if cell.tanh_sigmoid:
        h = _fast_tanh(c, out=ig)
    else:
        h = ig
        h[...] = cell.act(c)
    h *= z[..., 2 * u:3 * u]          # o * act(c_t)
    return h


def lstm_step(xp_t, states, cell, saved=None):
    """One LSTM step: z = x_t W + b + h_{t-1} U, then :func:`lstm_update`; output = h_t."""
    h_prev, c_prev = states
    z = h_prev @ cell.recurrent_kernel
    z += xp_t
    c = np.array(c_prev)              # the caller's state stays untouched
    h = lstm_update(z, c, cell)
    if saved is not None:
        saved.append((c_prev, z, c))  # c_{t-1}, gates (i, f, o, g), c_t
    return h, (h, c)


def lstm_step_backward(dstates, h_prev, saved, cell):
    """With gates i, f, o, g and tc = act(c_t):  dc_t += dh * o * act'(tc);
    do = dh * tc;  di = dc_t g;  df = dc_t c_{t-1};  dg = dc_t i;  dc_{t-1} = dc_t f;
    pre-activation grads da = d(gate) * (r)act'(gate), in Keras order (i, f, c, o);
    dh_{t-1} = da U^T."""
    dh, dc = dstates
    c_prev, gates, c = saved
    u = cell.units
    act_d, ract_d = cell.derivatives()
    i, f, o, g = gates[:, :u], gates[:, u:2 * u], gates[:, 2 * u:3 * u], gates[:, 3 * u:]
    tc = cell.act(c)
    dct = dh * o
    dct *= act_d(tc)
    dct += dc
    da = np.empty((dh.shape[0], 4 * u), dh.dtype)
    np.multiply(dct * g, ract_d(i), out=da[:, :u])
    np.multiply(dct * c_prev, ract_d(f), out=da[:, u:2 * u])
    np.multiply(dct * i, act_d(g), out=da[:, 2 * u:3 * u])
    np.multiply(dh * tc, ract_d(o), out=da[:, 3 * u:])
    return da, da, (da @ cell.weights[1].T, dct * f)


def gru_step(xp_t, states, cell, saved=None):
    """Gates in Keras order z (update), r (reset), h (candidate):
    reset_after=True  (Keras 3 default, bias (2, 3u) = input / recurrent bias):
        m = h_{t-1} U + b_rec;  z = ract(x_z + m_z);  r = ract(x_r + m_r)
        hh = act(x_h + r * m_h)
    reset_after=False (bias (3u,), all in the input projection):
        z = ract(x_z + h U_z);  r = ract(x_r + h U_r);  hh = act(x_h + (r * h) U_h)
    h_t = z * h_{t-1} + (1 - z) * hh;  output = h_t."""
    h_prev = states[0]
    u = cell.units
    if cell.reset_after:
        m = h_prev @ cell.recurrent_kernel
        if cell.recurrent_bias is not None:
            m += cell.recurrent_bias
        z = cell.ract(xp_t[:, :u] + m[:, :u])
        r = cell.ract(xp_t[:, u:2 * u] + m[:, u:2 * u])
        hh = cell.act(xp_t[:, 2 * u:] + r * m[:, 2 * u:])
        rec = m[:, 2 * u:]                     # h_{t-1} U_h + b_rec,h
    else:
        m = h_prev @ cell.recurrent_kernel[:, :2 * u]
        z = cell.ract(xp_t[:, :u] + m[:, :u])
        r = cell.ract(xp_t[:, u:2 * u] + m[:, u:])
        rec = r * h_prev                       # the input of U_h
        hh = cell.act(xp_t[:, 2 * u:] + rec @ cell.recurrent_kernel[:, 2 * u:])
    h = z * h_prev + (1.0 - z) * hh
    if saved is not None:
        saved.append((z, r, hh, rec))
    return h, (h,)


def gru_step_backward(dstates, h_prev, saved, cell):
    """dz = dh (h_{t-1} - hh);  da_h = dh (1 - z) act'(hh);  da_z = dz ract'(z).
    reset_after: dr = da_h m_h, da_m = (da_z, da_r, da_h r), dh_{t-1} = dh z + da_m U^T.
    reset_before: d(r h) = da_h U_h^T, dr = d(r h) h_{t-1},
    dh_{t-1} = dh z + (da_z, da_r) U_zr^T + d(r h) r (U_h's gradient uses r h_{t-1})."""
    dh = dstates[0]
    z, r, hh, rec = saved
    u = cell.units
    act_d, ract_d = cell.derivatives()
    U = cell.weights[1]
    da = np.empty((dh.shape[0], 3 * u), dh.dtype)
    np.multiply(dh * (h_prev - hh), ract_d(z), out=da[:, :u])
    np.multiply(dh * (1.0 - z), act_d(hh), out=da[:, 2 * u:])
    if cell.reset_after:
        np.multiply(da[:, 2 * u:] * rec, ract_d(r), out=da[:, u:2 * u])
        dm = da.copy()
        dm[:, 2 * u:] *= r
        return da, dm, (dh * z + dm @ U.T,)
    drh = da[:, 2 * u:] @ U[:, 2 * u:].T
    np.multiply(drh * h_prev, ract_d(r), out=da[:, u:2 * u])
    return da, da, (dh * z + da[:, :2 * u] @ U[:, :2 * u].T + drh * r,)


class ScanTape:
    """What a :func:`masked_scan` run in training mode keeps for backpropagation:
    per processing step k, ``(t, rows, saved)`` (``rows``: the valid rows, a slice or
    an index array, None when no row is valid; ``saved``: the cell's step values), and
    ``h_prev`` (T, N, u), the state h_{t-1} that entered each valid (t, n)."""

    def __init__(self, steps, n, units, dtype):
        self.steps = []
        self.h_prev = np.zeros((steps, n, units), dtype)


def masked_scan(step, cell, xp, init_states, mask=None, go_backwards=False,
                return_sequences=False, zero_output_for_mask=False, lengths=None, steps=None,
                tape=None):
    """Run ``step`` over time, exactly like Keras' ``backend.rnn``.

    xp: (T, N, G) time-major input projections, or a callable ``xp(t, rows)``
    returning the (n_rows, G) projections of timestep t for ``rows`` (a slice or an
    index array; then ``steps`` = T). mask: (N, T) bool or None.
    Returns (N, T, units) outputs in *processing order* (reversed when
    ``go_backwards``, as Keras) if ``return_sequences``, else the last output (N, units).
    For each processed step t with mask m_t:
        out_t   = m_t ? step_output : (0 if zero_output_for_mask else out_{t-1})
        state_t = m_t ? step_state  : state_{t-1}
    with out_{-1} = 0.

    Implementation: the step is evaluated only on the rows that are valid at t, so
    the work is proportional to the number of real tokens, not N*T. In general the
    valid rows are gathered and scattered back; when ``lengths`` is given (rows
    sorted by decreasing length and mask[n, t] == t < lengths[n], i.e. post-padding)
    the valid rows are the prefix [0, A_t) and are used in place (no copies).
    Because every cell's output is its new first state h, and both start at zero,
    "previous output" == current h.

    With a :class:`ScanTape` (training), each step's values are recorded in it and the
    state arrays are replaced, never written in place, so the recorded values stay valid.
    """
    get = xp if callable(xp) else (lambda t, rows: xp[t][rows])
    T = steps if callable(xp) else xp.shape[0]
    N = init_states[0].shape[0]
    u = cell.units
    dt = init_states[0].dtype
    states = [np.array(s, dtype=dt) for s in init_states]  # owned, updated in place
    outs = np.empty((T, N, u), dt) if return_sequences else None
    last = np.zeros((N, u), dt)
    everything = slice(None)
    if lengths is not None:
        active = np.count_nonzero(lengths[:, None] > np.arange(T)[None, :], axis=0)
    order = range(T - 1, -1, -1) if go_backwards else range(T)
    for k, t in enumerate(order):
        if mask is None:
            n_valid, rows = N, everything
        elif lengths is not None:
            n_valid = int(active[t])
            rows = slice(0, n_valid)
        else:
            rows = np.flatnonzero(mask[:, t])
            n_valid = rows.size
        saved = None if tape is None else []
        if n_valid == N:  # every row valid: plain step
            if tape is not None:
                tape.h_prev[t] = states[0]
            out, new_states = step(get(t, everything), tuple(states), cell, saved)
            states = list(new_states)
        elif n_valid == 0:  # every row masked: states and previous outputs carry over
            out = np.zeros((N, u), dt) if zero_output_for_mask else states[0]
        else:
            if tape is not None:
                tape.h_prev[t, rows] = states[0][rows]
            sub_out, sub_states = step(get(t, rows), tuple(s[rows] for s in states), cell, saved)
            if tape is not None:
                states = [s.copy() for s in states]
            for s, ns in zip(states, sub_states):
                s[rows] = ns
            if zero_output_for_mask:
                out = np.zeros((N, u), dt)
                out[rows] = sub_out
            else:
                out = states[0]
        if outs is not None:
            outs[k] = out
        last = out
        if tape is not None:
            tape.steps.append((t, everything if n_valid == N else (rows if n_valid else None),
                               saved[0] if saved else None))
    if outs is not None:
        return outs.transpose(1, 0, 2)
    return np.array(last)


def masked_scan_backward(step_backward, cell, tape, d_out, return_sequences,
                         zero_output_for_mask):
    """Backpropagation through time over a recorded :func:`masked_scan`.

    ``d_out``: dL/d(output), (N, T, u) in processing order if ``return_sequences``, else
    (N, u) for the last output. Walks the steps in reverse: the output gradient of step k
    goes to the state h (a masked row's output is h too, unless ``zero_output_for_mask``,
    where it is a constant 0); a valid row runs the cell's step-backward; a masked row
    carries its state gradient unchanged to step k-1 (its state was carried forward).
    Returns (da_x, da_m), time-major (T, N, G): dL/d(input projection) and dL/d(recurrent
    pre-activation) (the same array unless the cell tells them apart, e.g. GRU)."""
    T, N, u = tape.h_prev.shape
    dt = tape.h_prev.dtype
    dstates = [np.zeros((N, u), dt) for _ in range(cell.n_states())]
    da_x = np.zeros((T, N, cell.gates * u), dt)
    da_m = None
    last = len(tape.steps) - 1
    for k in range(last, -1, -1):
        t, rows, saved = tape.steps[k]
        g = d_out[:, k] if return_sequences else (d_out if k == last else None)
        if g is not None:
            if not zero_output_for_mask:
                dstates[0] += g
            elif rows is not None:
                dstates[0][rows] += g[rows]
        if rows is None:
            continue
        dx_t, dm_t, dprev = step_backward(tuple(d[rows] for d in dstates), tape.h_prev[t, rows],
                                          saved, cell)
        da_x[t, rows] = dx_t
        if dm_t is not dx_t:
            if da_m is None:
                da_m = np.zeros_like(da_x)
            da_m[t, rows] = dm_t
        for d, p in zip(dstates, dprev):
            d[rows] = p
    return da_x, (da_x if da_m is None else da_m)


def fused_bidirectional_scan(fwd, bwd, ids, lengths, table):
    """Forward AND backward direction of a Bidirectional SimpleRNN/LSTM in ONE time loop.

    Exact reformulation of two :func:`masked_scan` runs for post-padded input (rows
    sorted by decreasing length L_n, mask[n, t] == t < L_n). Keras' backward pass
    processes t = T-1 .. 0 and skips (state unchanged, zero) every t >= L_n, so its
    k-th *real* step consumes token L_n-1-k. Feeding the backward direction the
    row-wise reversed tokens rev[n, k] = ids[n, L_n-1-k] therefore gives the same
    states, and both directions are then valid on the same row prefix
    [0, A_k), A_k = #{n : L_n > k}. The two states are stacked as (2, N, u), and per
    step k (d = 0 forward, d = 1 backward):
        z_d = table_d[tok_d[:A_k, k]] + h_d[:A_k] @ U_d     (one take, one batched matmul)
        h_d[:A_k] (, c_d[:A_k]) <- cell update of z_d          (gate maths once on (2, A_k, G))
    with the same formulas as simple_rnn_step / lstm_step; rows >= A_k keep their state.

    ``table``: (2V, G) projection tables [table_fwd; table_bwd].
    Returns (y_fwd, y_bwd), both in input time order: (N, T, u) each with zeros at
    padded positions if return_sequences (Keras forces zero_output_for_mask there),
    else the final h (N, u) of each direction (zeros for an empty row)."""
    N, T = ids.shape
    u = fwd.units
    V = table.shape[0] // 2
    lstm = isinstance(fwd, LSTM)
    steps = np.arange(T)
    # (2, N, T) token ids into the stacked table; backward ids reversed within each row
    src = lengths[:, None] - 1 - steps[None, :]
    tok = np.stack([ids, np.take_along_axis(ids, np.maximum(src, 0), axis=1) + V])
    active = np.count_nonzero(lengths[:, None] > steps[None, :], axis=0)
    rk = np.stack([fwd.recurrent_kernel, bwd.recurrent_kernel])  # (2, u, G)
    dt = table.dtype
    h = np.zeros((2, N, u), dt)
    c = np.zeros((2, N, u), dt) if lstm else None
    outs = np.zeros((2, T, N, u), dt) if fwd.return_sequences else None
    with blas_threads(1), np.errstate(over="ignore"):
        for k in range(T):
            a = int(active[k])
            if a == 0:  # lengths are sorted: no row has a token from here on
                break
            hv = h[:, :a]
            z = np.matmul(hv, rk)
            z += np.take(table, tok[:, :a, k], axis=0)
            if not lstm:  # SimpleRNN: h = act(z)
                hv[...] = fwd.act(z)
            else:  # LSTM: the same gate maths as lstm_step, on both directions at once
                lstm_update(z, c[:, :a], fwd, h_out=hv)
            if outs is not None:
                outs[:, k, :a] = hv
    if outs is None:
        return h[0], h[1]
    y = outs[0].transpose(1, 0, 2)
    # backward step k produced the output of input position L_n-1-k
    rows = np.arange(N)[:, None]
    y_rev = outs[1][np.maximum(src, 0), rows]       # (N, T, u)
    y_rev[src < 0] = 0.0
    return y, y_rev


def post_padding_order(mask):
    """If every row of ``mask`` (N, T) is valid exactly on a prefix [0, L_n)
    (post-padding, e.g. TextVectorization output), return (order, sorted lengths)
    with rows ordered by decreasing length; otherwise (None, None)."""
    lengths = mask.sum(axis=1)
    if not np.array_equal(mask, np.arange(mask.shape[1])[None, :] < lengths[:, None]):
        return None, None
    order = np.argsort(-lengths, kind="stable")
    return order, lengths[order]


def _unsort(y, order):
    out = np.empty_like(y)
    out[order] = y
    return out


def _scatter_time(y, positions):
    """out[n, positions[n, j]] = y[n, j] for (N, T, u) outputs of compacted rows."""
    out = np.empty_like(y)
    out[np.arange(y.shape[0])[:, None], positions] = y
    return out


class RNNBase(Layer):
    """Shared config handling and forward pass for SimpleRNN / LSTM / GRU.

    ``forward(x, mask)``: x (N, T, D) float; mask (N, T) bool or None.
    Returns (N, T, units) if ``return_sequences`` else (N, units)."""

    recurrent = True

    supports_masking = True
    gates = 1
    step = None
    step_backward = None

    @classmethod
    def weight_shapes(cls, config):
        """kernel (in, gates*units), recurrent_kernel (units, gates*units) [+ bias]."""
        u = int(config["units"])
        g = cls.gates * u
        return [("in", g), (u, g)] + ([cls.bias_shape(config, g)] if config.get("use_bias", True) else [])

    @classmethod
    def bias_shape(cls, config, g):
        return (g,)

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 3 if self.use_bias else 2
        super().__init__(config, weights, class_name)
        self.units = int(config["units"])
        self.return_sequences = bool(config.get("return_sequences", False))
        self.go_backwards = bool(config.get("go_backwards", False))
        self.zero_output_for_mask = bool(config.get("zero_output_for_mask", False))
        for opt in ("return_state", "stateful"):
            if config.get(opt):
                raise self.unsupported(opt, True, "only stateless single-output RNNs are supported")
        if self.go_backwards and config.get("unroll") and self.zero_output_for_mask:
            # Keras' unrolled path applies the un-reversed mask here (differs from while-loop path)
            raise self.unsupported("unroll+go_backwards+zero_output_for_mask", True)
        where = f"{self.class_name} '{self.name}'"
        self.act = activations.get(config.get("activation", "tanh"), where)
        self.ract = activations.get(config.get("recurrent_activation", "sigmoid"), where)
        self.activation_fns = (self.act, self.ract)  # before the fast replacements below
        if self.act is activations.sigmoid:
            self.act = _fast_sigmoid
        if self.act is activations.tanh:
            self.act = _fast_tanh
        if self.ract is activations.sigmoid:
            self.ract = _fast_sigmoid
        self.kernel = weights[0]
        self.recurrent_kernel = np.ascontiguousarray(weights[1])
        self.input_bias = None
        self.recurrent_bias = None
        if self.use_bias:
            self._split_bias(weights[2])
        g = self.gates * self.units
        if self.kernel.shape[1] != g or self.recurrent_kernel.shape != (self.units, g):
            raise ModelFileError(f"{where}: weight shapes {self.kernel.shape}, "
                             f"{self.recurrent_kernel.shape} do not match units={self.units}")

    def _split_bias(self, bias):
        self.input_bias = bias

    def n_states(self):
        return 1

    def project(self, x, mask=None):
        """Input projection x @ kernel + bias for all timesteps at once, time-major
        (T, N, G). With a mostly-padding mask only the valid (t, n) positions are
        projected (the others are never read by the scan and are left at 0)."""
        xt = x.transpose(1, 0, 2)
        if mask is not None and mask.mean() < 0.75:
            mt = np.ascontiguousarray(mask.T)
            xp = np.zeros(xt.shape[:2] + (self.kernel.shape[1],), self.kernel.dtype)
            rows = np.matmul(xt[mt], self.kernel)
            if self.input_bias is not None:
                rows += self.input_bias
            xp[mt] = rows
            return xp
        xp = np.matmul(np.ascontiguousarray(xt), self.kernel)
        if self.input_bias is not None:
            xp += self.input_bias
        return xp

    def forward(self, x, mask=None):
        self.check_rank(x, 3, "sequence batch (N, T, features)")
        self.check_last_dim(x, self.kernel.shape[0])
        # One BLAS thread: the per-step matmuls are tiny, so thread hand-offs cost more
        # than they save (measured 3x faster on 2 busy cores, incl. the projection).
        with blas_threads(1):
            if mask is not None and mask.all():
                mask = None  # no masked step anywhere: identical result, faster
            order, lengths = post_padding_order(mask) if mask is not None else (None, None)
            if order is not None:
                x, mask = x[order], mask[order]
            y = self.scan(self.project(x, mask), mask, lengths)
            return y if order is None else _unsort(y, order)

    def scan(self, xp, mask, lengths=None, steps=None, n=None):
        """Run the masked time loop on projections xp (array (T, N, G) or callable)."""
        n = xp.shape[1] if n is None else n
        init = tuple(np.zeros((n, self.units), self.kernel.dtype) for _ in range(self.n_states()))
        with blas_threads(1), np.errstate(over="ignore"):
            return masked_scan(type(self).step, self, xp, init, mask, self.go_backwards,
                               self.return_sequences, self.zero_output_for_mask, lengths, steps)

    # --- Embedding folding: x = E[ids]  =>  x @ W + b = (E @ W + b)[ids] ---------
    def projection_table(self, embeddings):
        """(V, G) table of the input projection of every embedding row (cached)."""
        key = id(embeddings)
        cached = getattr(self, "_table", None)
        if cached is None or cached[0] != key:
            with blas_threads(1):
                table = embeddings @ self.kernel
            if self.input_bias is not None:
                table += self.input_bias
            self._table = (key, table)
        return self._table[1]

    def forward_ids(self, ids, mask, embeddings):
        """Same result as forward(embeddings[ids], mask), without the per-token matmul:
        the projection of timestep t is a row gather from projection_table()."""
        if mask is not None and mask.all():
            mask = None
        table = self.projection_table(embeddings)
        order, lengths = post_padding_order(mask) if mask is not None else (None, None)
        if order is not None:
            ids, mask = ids[order], mask[order]

        def xp(t, rows):
            return np.take(table, ids[rows, t], axis=0)

        y = self.scan(xp, mask, lengths, steps=ids.shape[1], n=ids.shape[0])
        return y if order is None else _unsort(y, order)

    def compute_mask(self, x, mask):
        return mask if self.return_sequences else None

    # --- training: backpropagation through time ---------------------------------
    def derivatives(self):
        """(act', ract') as functions of the activation's output."""
        where = f"{self.class_name} layer '{self.name}'"
        return tuple(activations.output_derivative(fn, where) for fn in self.activation_fns)

    def forward_train(self, x, mask, ctx):
        """forward() with the scan recorded in a :class:`ScanTape` (rows sorted by length
        for post-padded input, as in forward)."""
        self.check_rank(x, 3, "sequence batch (N, T, features)")
        self.check_last_dim(x, self.kernel.shape[0])
        if ctx.training and (self.config.get("dropout") or self.config.get("recurrent_dropout")):
            raise self.no_backward("with dropout/recurrent_dropout in training mode")
        self.derivatives()  # fail now, not after the forward pass, on an activation without one
        if mask is not None and mask.all():
            mask = None
        order, lengths = post_padding_order(mask) if mask is not None else (None, None)
        if order is not None:
            x, mask = x[order], mask[order]
        n, steps = x.shape[:2]
        tape = ScanTape(steps, n, self.units, self.kernel.dtype)
        init = tuple(np.zeros((n, self.units), self.kernel.dtype) for _ in range(self.n_states()))
        with blas_threads(1), np.errstate(over="ignore"):
            y = masked_scan(type(self).step, self, self.project(x, mask), init, mask,
                            self.go_backwards, self.return_sequences, self.zero_output_for_mask,
                            lengths, tape=tape)
        self._saved = (x, order, tape)
        return y if order is None else _unsort(y, order)

    def backward(self, dy, need_dx=True):
        """BPTT (:func:`masked_scan_backward`), then, with da_x / da_m (T, N, G) of all
        timesteps: dW = X^T da_x, dU = H_prev^T da_m (one matmul each over all
        timesteps), db = sum da_x (GRU reset_after: also the recurrent bias, sum da_m),
        dx = da_x W^T."""
        x, order, tape = self._saved
        if order is not None:
            dy = dy[order]
        with blas_threads(1):
            da_x, da_m = masked_scan_backward(type(self).step_backward, self, tape, dy,
                                              self.return_sequences, self.zero_output_for_mask)
        steps, n, g = da_x.shape
        flat = da_x.reshape(-1, g)
        xt = x.transpose(1, 0, 2).reshape(-1, x.shape[2])
        grads = [np.matmul(xt.T, flat), self.recurrent_kernel_grad(tape, da_m)]
        if self.use_bias:
            grads.append(self.bias_grad(da_x, da_m))
        if not need_dx:
            return None, grads
        dx = np.matmul(da_x, self.weights[0].T).transpose(1, 0, 2)
        return (dx if order is None else _unsort(dx, order)), grads

    def recurrent_kernel_grad(self, tape, da_m):
        u = self.units
        return np.matmul(tape.h_prev.reshape(-1, u).T, da_m.reshape(-1, da_m.shape[-1]))

    def bias_grad(self, da_x, da_m):
        return da_x.sum(axis=(0, 1))


def _fast_sigmoid(x):
    """sigmoid(x) = 1 / (1 + exp(-x)); exp overflow to inf gives the correct 0
    (the scan runs under np.errstate(over="ignore"))."""
    y = np.negative(x)
    np.exp(y, out=y)
    y += 1.0
    return np.reciprocal(y, out=y)


def _fast_tanh(x, out=None):
    """tanh(x) = 2 / (1 + exp(-2x)) - 1 (abs. error ~1e-16; SIMD exp is ~3x faster than np.tanh)."""
    y = np.multiply(x, -2.0, out=out)
    np.exp(y, out=y)
    y += 1.0
    np.divide(2.0, y, out=y)
    y -= 1.0
    return y


class SimpleRNN(RNNBase):
    gates = 1
    step = staticmethod(simple_rnn_step)
    step_backward = staticmethod(simple_rnn_step_backward)


class LSTM(RNNBase):
    gates = 4
    step = staticmethod(lstm_step)
    step_backward = staticmethod(lstm_step_backward)

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        # Keras column order i, f, c, o -> i, f, o, c (see lstm_step)
        u = self.units
        perm = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]
        self.kernel = np.ascontiguousarray(self.kernel[:, perm])
        self.recurrent_kernel = np.ascontiguousarray(self.recurrent_kernel[:, perm])
        if self.input_bias is not None:
            self.input_bias = self.input_bias[perm]
        self.tanh_sigmoid = self.act is _fast_tanh and self.ract is _fast_sigmoid
        if self.tanh_sigmoid:  # see lstm_step
            scale = np.r_[np.full(3 * u, -1.0), np.full(u, -2.0)]
            self.kernel = self.kernel * scale
            self.recurrent_kernel = np.ascontiguousarray(self.recurrent_kernel * scale)
            if self.input_bias is not None:
                self.input_bias = self.input_bias * scale

    def n_states(self):
        return 2


class GRU(RNNBase):
    gates = 3
    step = staticmethod(gru_step)
    step_backward = staticmethod(gru_step_backward)

    def recurrent_kernel_grad(self, tape, da_m):
        """reset_before: U_h multiplies r * h_{t-1}, not h_{t-1} (gathered from the tape)."""
        if self.reset_after:
            return super().recurrent_kernel_grad(tape, da_m)
        u = self.units
        rh = np.zeros_like(tape.h_prev)
        for t, rows, saved in tape.steps:
            if rows is not None:
                rh[t, rows] = saved[3]
        hp = tape.h_prev.reshape(-1, u).T
        return np.concatenate([np.matmul(hp, da_m[..., :2 * u].reshape(-1, 2 * u)),
                               np.matmul(rh.reshape(-1, u).T, da_m[..., 2 * u:].reshape(-1, u))], axis=1)

    def bias_grad(self, da_x, da_m):
        if self.reset_after:
            return np.stack([da_x.sum(axis=(0, 1)), da_m.sum(axis=(0, 1))])
        return da_x.sum(axis=(0, 1))

    @classmethod
    def bias_shape(cls, config, g):
        """reset_after=True keeps separate input and recurrent biases: (2, 3*units)."""
        return (2, g) if config.get("reset_after", True) else (g,)

    def __init__(self, config, weights, class_name=None):
        self.reset_after = bool(config.get("reset_after", True))
        super().__init__(config, weights, class_name)

    def _split_bias(self, bias):
        if self.reset_after:
            if bias.ndim != 2 or bias.shape[0] != 2:
                raise ModelFileError(f"GRU '{self.name}': reset_after=True expects bias of shape "
                                 f"(2, 3*units), got {bias.shape}")
            self.input_bias, self.recurrent_bias = bias[0], bias[1]
        else:
            self.input_bias = bias


RNN_CLASSES = {"SimpleRNN": SimpleRNN, "LSTM": LSTM, "GRU": GRU}
