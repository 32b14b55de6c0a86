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
from ..errors import ModelFileError, UnsupportedLayerError
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
    """One LSTM step: z = x_t W + b + h_{t-1} U, then :func:`lstm_update`; output = h_t.
    ``h_{t-1} U`` is the cell's :meth:`~RNNBase.recurrent_project` (a matmul; ConvLSTM's
    'same' convolution of the state maps, whose gate maths is this same step)."""
    h_prev, c_prev = states
    z = cell.recurrent_project(h_prev)
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
    dh_{t-1} = da U^T (the cell's :meth:`~RNNBase.recurrent_input_grad`; the arrays may
    have spatial axes, ConvLSTM's state maps)."""
    dh, dc = dstates
    c_prev, gates, c = saved
    u = cell.units
    act_d, ract_d = cell.derivatives()
    i, f, o, g = gates[..., :u], gates[..., u:2 * u], gates[..., 2 * u:3 * u], gates[..., 3 * u:]
    tc = cell.act(c)
    dct = dh * o
    dct *= act_d(tc)
    dct += dc
    da = np.empty(dh.shape[:-1] + (4 * u,), dh.dtype)
    np.multiply(dct * g, ract_d(i), out=da[..., :u])
    np.multiply(dct * c_prev, ract_d(f), out=da[..., u:2 * u])
    np.multiply(dct * i, act_d(g), out=da[..., 2 * u:3 * u])
    np.multiply(dh * tc, ract_d(o), out=da[..., 3 * u:])
    return da, da, (cell.recurrent_input_grad(da), dct * f)


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
    ``h_prev`` (T, N, *h), the state h_{t-1} that entered each valid (t, n); the scan
    also notes each state's shape and the projection's (``state_shapes``, ``proj_shape``),
    and an element mask (``element_mask``, see :func:`masked_scan`) when it ran on one."""

    def __init__(self, steps, state_shape, dtype):
        self.steps = []
        self.h_prev = np.zeros((steps,) + tuple(state_shape), dtype)
        self.state_shapes = None
        self.proj_shape = None
        self.element_mask = None


def step_mask(mask, t, state_ndim):
    """The mask of timestep t of an element mask (N, T, *P) as (N, *P, 1, ...), to
    broadcast against states (N, *S, F) whose leading spatial sizes are P (Keras'
    ``_expand_mask``: expand, then tile over the remaining axes)."""
    m = mask[:, t]
    return m.reshape(m.shape + (1,) * (state_ndim - m.ndim))


def masked_scan(step, cell, xp, init_states, mask=None, go_backwards=False,
                return_sequences=False, zero_output_for_mask=False, lengths=None, steps=None,
                tape=None, return_states=False):
    """Run ``step`` over time, exactly like Keras' ``backend.rnn``.

    xp: (T, N, G) time-major input projections (or (T, N, ..., G): ConvLSTM's maps), or a
    callable ``xp(t, rows)`` returning the (n_rows, G) projections of timestep t for
    ``rows`` (a slice or an index array; then ``steps`` = T). mask: (N, T) bool or None,
    or an *element mask* (N, T, *P) (ConvLSTM after a Masking or an Embedding: Keras
    masks each pixel of the state maps (N, *P, ..., F)), where the formulas below hold
    element by element.
    ``step`` is any cell's step function (a stack of cells is one step).
    Returns (N, T, units) outputs in *processing order* (reversed when
    ``go_backwards``, as Keras) if ``return_sequences``, else the last output (N, units);
    with ``return_states``, ``(outputs, final states)`` (Keras' ``return_state``).
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
    An element mask runs the step on every row and selects element by element
    (``np.where``, as Keras' ``tf.where``).
    """
    get = xp if callable(xp) else (lambda t, rows: xp[t][rows])
    T = steps if callable(xp) else xp.shape[0]
    N = init_states[0].shape[0]
    shape = init_states[0].shape  # (N, units), or ConvLSTM's (N, ..., filters)
    dt = init_states[0].dtype
    states = [np.array(s, dtype=dt) for s in init_states]  # owned, updated in place
    if tape is not None:
        tape.state_shapes = [s.shape for s in states]
        tape.proj_shape = None if callable(xp) else xp.shape[1:]
    outs = np.empty((T,) + shape, dt) if return_sequences else None
    last = np.zeros(shape, dt)
    everything = slice(None)
    if lengths is not None:
        active = np.count_nonzero(lengths[:, None] > np.arange(T)[None, :], axis=0)
    elements = mask is not None and mask.ndim > 2
    if elements and tape is not None:
        tape.element_mask = mask
    order = range(T - 1, -1, -1) if go_backwards else range(T)
    for k, t in enumerate(order):
        if elements:  # every row steps; each element keeps its old state where masked
            m = step_mask(mask, t, len(shape))
            saved = None if tape is None else []
            if tape is not None:
                tape.h_prev[t] = states[0]
            out, new_states = step(get(t, everything), tuple(states), cell, saved)
            states = [np.where(m, ns, s) for s, ns in zip(states, new_states)]
            out = np.where(m, out, 0.0) if zero_output_for_mask else states[0]
            if outs is not None:
                outs[k] = out
            last = out
            if tape is not None:
                tape.steps.append((t, everything, saved[0] if saved else None))
            continue
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
            out = np.zeros(shape, dt) if zero_output_for_mask else states[0]
        else:
            if tape is not None:
                tape.h_prev[t, rows] = states[0][rows]
            sub_out, sub_states = step(get(t, rows), tuple(s[rows] for s in states), cell, saved)
            if tape is not None:
                states = [s.copy() for s in states]
            for s, ns in zip(states, sub_states):
                s[rows] = ns
            if zero_output_for_mask:
                out = np.zeros(shape, dt)
                out[rows] = sub_out
            else:
                out = states[0]
        if outs is not None:
            outs[k] = out
        last = out
        if tape is not None:
            tape.steps.append((t, everything if n_valid == N else (rows if n_valid else None),
                               saved[0] if saved else None))
    y = np.swapaxes(outs, 0, 1) if outs is not None else np.array(last)
    return (y, tuple(states)) if return_states else y


def masked_scan_backward(step_backward, cell, tape, d_out, return_sequences,
                         zero_output_for_mask, d_states=None):
    """Backpropagation through time over a recorded :func:`masked_scan`.

    ``d_out``: dL/d(output), (N, T, u) in processing order if ``return_sequences``, else
    (N, u) for the last output. Walks the steps in reverse: the output gradient of step k
    goes to the state h (a masked row's output is h too, unless ``zero_output_for_mask``,
    where it is a constant 0); a valid row runs the cell's step-backward; a masked row
    carries its state gradient unchanged to step k-1 (its state was carried forward).
    ``d_states``: dL/d(final states) (``return_state``; None entries: unused), the
    gradient the walk starts from. With an element mask m_t: the step's new values get
    d * m_t, the carried ones d * (1 - m_t) (the gradient of ``np.where``).
    Returns (da_x, da_m), time-major (T, N, G): dL/d(input projection) and dL/d(recurrent
    pre-activation) (the same array unless the cell tells them apart, e.g. GRU)."""
    T = tape.h_prev.shape[0]
    dt = tape.h_prev.dtype
    dstates = [np.zeros(shape, dt) for shape in tape.state_shapes]
    for d, g in zip(dstates, d_states or ()):
        if g is not None:
            d += g
    da_x = np.zeros((T,) + tuple(tape.proj_shape), dt)
    da_m = None
    last = len(tape.steps) - 1
    for k in range(last, -1, -1):
        t, rows, saved = tape.steps[k]
        g = d_out[:, k] if return_sequences else (d_out if k == last else None)
        m = None if tape.element_mask is None else step_mask(tape.element_mask, t, dstates[0].ndim)
        if g is not None:
            if not zero_output_for_mask:
                dstates[0] += g
            elif m is not None:
                dstates[0] += np.where(m, g, 0.0)
            elif rows is not None:
                dstates[0][rows] += g[rows]
        if rows is None:
            continue
        if m is not None:  # split each state's gradient between the new and the carried value
            carried = [np.where(m, 0.0, d) for d in dstates]
            dstates = [np.where(m, d, 0.0) for d in dstates]
        dx_t, dm_t, dprev = step_backward(tuple(d[rows] for d in dstates), tape.h_prev[t, rows],
                                          saved, cell)
        da_x[t, rows] = dx_t
        if dm_t is not dx_t:
            if da_m is None:
                da_m = np.zeros_like(da_x)
            da_m[t, rows] = dm_t
        if m is not None:
            dstates = [p + c for p, c in zip(dprev, carried)]
            continue
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
    with rows ordered by decreasing length; otherwise (None, None) (also for no mask
    and for an element mask (N, T, ...))."""
    if mask is None or mask.ndim != 2:
        return None, None
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
    """Shared config handling and forward pass for SimpleRNN / LSTM / GRU (and the
    layers built on their cells: ``RNN(cell)``, ConvLSTM).

    ``forward(x, mask)``: x (N, T, D) float; mask (N, T) bool or None.
    Returns (N, T, units) if ``return_sequences`` else (N, units); with ``return_state``
    a tuple ``(output, *final states)`` (Keras' order: LSTM h, c; GRU/SimpleRNN h), each
    state (N, units): the call has several outputs (see ``engine.graph.OutputItem``)."""

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
        self._read_options(config)
        self._read_activations(config)
        self._read_weights(weights)

    def _read_options(self, config):
        """The options of Keras' ``RNN`` base layer."""
        self.return_sequences = bool(config.get("return_sequences", False))
        self.return_state = bool(config.get("return_state", False))
        self.go_backwards = bool(config.get("go_backwards", False))
        self.zero_output_for_mask = bool(config.get("zero_output_for_mask", False))
        if config.get("stateful"):
            raise self.unsupported("stateful", True, "only stateless RNNs are supported (the "
                                   "state kept between batches is not reproduced)")
        if self.go_backwards and config.get("unroll") and self.zero_output_for_mask:
            # Keras' unrolled path applies the un-reversed mask here (differs from while-loop path)
            raise self.unsupported("unroll+go_backwards+zero_output_for_mask", True)

    def _read_activations(self, config):
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

    def _read_weights(self, weights):
        where = f"{self.class_name} '{self.name}'"
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

    @property
    def n_outputs(self):
        """1, or with ``return_state`` the output and each state."""
        return 1 + self.n_states() if self.return_state else 1

    def recurrent_project(self, h):
        """h_{t-1} U: the recurrent pre-activation (a matmul here)."""
        return h @ self.recurrent_kernel

    def recurrent_input_grad(self, da):
        """dL/dh_{t-1} from dL/d(h_{t-1} U) ``da`` in Keras' column order: da U^T."""
        return da @ self.weights[1].T

    def initial_states(self, n, xp=None):
        """Zero states, (n, units) each (Keras' ``get_initial_state``)."""
        return tuple(np.zeros((n, self.units), self.kernel.dtype) for _ in range(self.n_states()))

    def check_input(self, x):
        self.check_rank(x, 3, "sequence batch (N, T, features)")
        self.check_last_dim(x, self.kernel.shape[0])

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
        self.check_input(x)
        # One BLAS thread: the per-step matmuls are tiny, so thread hand-offs cost more
        # than they save (measured 3x faster on 2 busy cores, incl. the projection).
        with blas_threads(1):
            if mask is not None and mask.all():
                mask = None  # no masked step anywhere: identical result, faster
            order, lengths = post_padding_order(mask)
            if order is not None:
                x, mask = x[order], mask[order]
            y = self.scan(self.project(x, mask), mask, lengths)
            return self._unsorted(y, order)

    def _unsorted(self, y, order):
        """The scan's result (an array, or with ``return_state`` the output and final
        states) back in the caller's row order; with ``return_state`` the tuple of outputs."""
        if self.return_state:
            out, states = y
            y = (out,) + tuple(self.keras_states(states))
            return y if order is None else tuple(_unsort(v, order) for v in y)
        return y if order is None else _unsort(y, order)

    def keras_states(self, states):
        """The scan's final states in Keras' ``return_state`` order."""
        return states

    def scan(self, xp, mask, lengths=None, steps=None, n=None):
        """Run the masked time loop on projections xp (array (T, N, G) or callable)."""
        n = xp.shape[1] if n is None else n
        init = self.initial_states(n, None if callable(xp) else xp)
        with blas_threads(1), np.errstate(over="ignore"):
            return masked_scan(type(self).step, self, xp, init, mask, self.go_backwards,
                               self.return_sequences, self.zero_output_for_mask, lengths, steps,
                               return_states=self.return_state)

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
        return self._unsorted(y, order)

    def compute_mask(self, x, mask):
        """Keras: the input mask on the output if ``return_sequences``; states have none."""
        out = mask if self.return_sequences else None
        return (out,) + (None,) * self.n_states() if self.return_state else out

    # --- training: backpropagation through time ---------------------------------
    def derivatives(self):
        """(act', ract') as functions of the activation's output."""
        where = f"{self.class_name} layer '{self.name}'"
        return tuple(activations.output_derivative(fn, where) for fn in self.activation_fns)

    def check_trainable(self, ctx):
        """Refuse what the backward pass does not reproduce, before the forward pass."""
        if ctx.training and (self.config.get("dropout") or self.config.get("recurrent_dropout")):
            raise self.no_backward("with dropout/recurrent_dropout in training mode")
        self.derivatives()  # fail now, not after the forward pass, on an activation without one

    def forward_train(self, x, mask, ctx):
        """forward() with the scan recorded in a :class:`ScanTape` (rows sorted by length
        for post-padded input, as in forward)."""
        self.check_input(x)
        self.check_trainable(ctx)
        if mask is not None and mask.all():
            mask = None
        order, lengths = post_padding_order(mask)
        if order is not None:
            x, mask = x[order], mask[order]
        xp = self.project(x, mask)
        init = self.initial_states(x.shape[0], xp)
        tape = ScanTape(x.shape[1], init[0].shape, self.kernel.dtype)
        with blas_threads(1), np.errstate(over="ignore"):
            y = masked_scan(type(self).step, self, xp, init, mask,
                            self.go_backwards, self.return_sequences, self.zero_output_for_mask,
                            lengths, tape=tape, return_states=self.return_state)
        self._saved = (x, order, tape)
        return self._unsorted(y, order)

    def _split_dy(self, dy, order):
        """(dL/d output, dL/d final states or None) in the scan's (sorted) row order. With
        ``return_state`` ``dy`` holds one gradient per output (None: output unused)."""
        d_states = None
        if self.return_state:
            d_out, d_keras = dy[0], list(dy[1:])
            d_states = self.scan_states(d_keras)
            if d_out is None:
                d_out = np.zeros(self._out_shape(), self.kernel.dtype)
            dy = d_out
        if order is not None:
            dy = dy[order]
            d_states = None if d_states is None else [None if d is None else d[order] for d in d_states]
        return dy, d_states

    def scan_states(self, keras_states):
        """The inverse of :meth:`keras_states`."""
        return keras_states

    def _out_shape(self):
        h = self._saved[2].h_prev.shape  # (T, N, *state)
        return (h[1], h[0]) + h[2:] if self.return_sequences else h[1:]

    def backward(self, dy, need_dx=True):
        """BPTT (:func:`masked_scan_backward`, started from the final states' gradient with
        ``return_state``), then, with da_x / da_m (T, N, G) of all timesteps:
        dW = X^T da_x, dU = H_prev^T da_m (one matmul each over all timesteps),
        db = sum da_x (GRU reset_after: also the recurrent bias, sum da_m), dx = da_x W^T."""
        x, order, tape = self._saved
        dy, d_states = self._split_dy(dy, order)
        with blas_threads(1):
            da_x, da_m = masked_scan_backward(type(self).step_backward, self, tape, dy,
                                              self.return_sequences, self.zero_output_for_mask,
                                              d_states)
        grads, dx = self.weight_grads(x, tape, da_x, da_m, need_dx)
        if not need_dx:
            return None, grads
        return (dx if order is None else _unsort(dx, order)), grads

    def weight_grads(self, x, tape, da_x, da_m, need_dx):
        """``(grads, dx)`` from the projections' gradients of all timesteps."""
        steps, n, g = da_x.shape
        flat = da_x.reshape(-1, g)
        xt = x.transpose(1, 0, 2).reshape(-1, x.shape[2])
        grads = [np.matmul(xt.T, flat), self.recurrent_kernel_grad(tape, da_m)]
        if self.use_bias:
            grads.append(self.bias_grad(da_x, da_m))
        dx = np.matmul(da_x, self.weights[0].T).transpose(1, 0, 2) if need_dx else None
        return grads, dx

    def recurrent_kernel_grad(self, tape, da_m):
        u = self.units
        return self.recurrent_grad(tape.h_prev.reshape(-1, u), da_m.reshape(-1, da_m.shape[-1]))

    def recurrent_grad(self, h_prev, da_m, rec=None):
        """dU = H_prev^T da_m over rows (h_{t-1}, da_m) of any steps; ``rec``: what the
        cell saved as the input of U where that is not h_{t-1} (GRU reset_before)."""
        return np.matmul(h_prev.T, da_m)

    def bias_grad(self, da_x, da_m):
        return da_x.sum(axis=(0, 1))

    def recurrent_input(self, saved):
        """What multiplies U besides h_{t-1}, from a step's saved values (GRU)."""
        return None

    def project_step(self, x):
        """x_t W + b of one timestep (a cell inside a stack: its input is made per step)."""
        z = x @ self.kernel
        if self.input_bias is not None:
            z += self.input_bias
        return z

    def step_grads(self, x, h_prev, saved, da_x, da_m):
        """The weight gradients of one step (a cell inside a stack), Keras order; the
        kernel's is None when ``x`` is (the stack's first cell: one matmul at the end)."""
        grads = [None if x is None else np.matmul(x.T, da_x), self.recurrent_grad(h_prev, da_m, self.recurrent_input(saved))]
        if self.use_bias:
            grads.append(self.bias_grad(da_x[None], da_m[None]))
        return grads


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
        # Keras column order i, f, c, o -> i, f, o, c (see lstm_step); the gates are the
        # last axis (ConvLSTM's kernels have spatial axes before it)
        u = self.units
        perm = np.r_[0:2 * u, 3 * u:4 * u, 2 * u:3 * u]
        self.kernel = np.ascontiguousarray(self.kernel[..., perm])
        self.recurrent_kernel = np.ascontiguousarray(self.recurrent_kernel[..., perm])
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
        return self.recurrent_grad(tape.h_prev.reshape(-1, u), da_m.reshape(-1, 3 * u), rh.reshape(-1, u))

    def recurrent_input(self, saved):
        return saved[3]   # r * h_{t-1} (reset_before)

    def recurrent_grad(self, h_prev, da_m, rec=None):
        """reset_before: dU_zr = H^T da_zr, dU_h = (r * H)^T da_h."""
        if self.reset_after:
            return super().recurrent_grad(h_prev, da_m)
        u = self.units
        return np.concatenate([np.matmul(h_prev.T, da_m[:, :2 * u]),
                               np.matmul(rec.T, da_m[:, 2 * u:])], axis=1)

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
# Keras' cells: the same maths as the layers above (which Keras builds on them)
CELL_CLASSES = {"SimpleRNNCell": SimpleRNN, "LSTMCell": LSTM, "GRUCell": GRU}
_CELL_PATHS = {"SimpleRNNCell": "simple_rnn_cell", "LSTMCell": "lstm_cell", "GRUCell": "gru_cell"}


def _cell_entry(entry, where):
    """``(class_name, config)`` of a serialized cell."""
    if not isinstance(entry, dict) or not isinstance(entry.get("config") or {}, dict):
        raise ModelFileError(f"{where}: the cell is not a layer entry, got {str(entry)[:80]!r}")
    return entry.get("class_name"), entry.get("config") or {}


def _cells_of(config, where):
    """The RNN layer's cells ``[(class_name, config)]`` (one, or a StackedRNNCells' list)."""
    cls, cfg = _cell_entry(config.get("cell"), where)
    if cls == "StackedRNNCells":
        cells = cfg.get("cells")
        if not isinstance(cells, list) or not cells:
            raise ModelFileError(f"{where}: StackedRNNCells has no 'cells' list")
        out = [_cell_entry(c, where) for c in cells]
    else:
        out = [(cls, cfg)]
    for c, _ in out:
        if c not in CELL_CLASSES:
            raise UnsupportedLayerError(
                f"{where}: cell class {c!r} is not supported (supported: "
                f"{', '.join(sorted(CELL_CLASSES))}, or StackedRNNCells of them; ConvLSTM has "
                "its own layers)")
    return out


class RNN:
    """Keras' generic ``RNN(cell)`` layer around ``SimpleRNNCell``, ``LSTMCell``,
    ``GRUCell`` or ``StackedRNNCells`` of them (with return_sequences, return_state,
    go_backwards, masks). One cell builds the layer of that cell (SimpleRNN, LSTM, GRU:
    the same maths, from the cell's config and the RNN's options); a stack builds a
    :class:`StackedRNN`. Either runs the one :func:`masked_scan`."""

    @staticmethod
    def _where(config):
        return f"RNN layer '{config.get('name')}'"

    @classmethod
    def weight_shapes(cls, config):
        """Each cell's kernel, recurrent kernel [and bias], in the file's order (a stack's
        cells by their weight-group names, see :meth:`StackedRNN.file_order`)."""
        cells = _cells_of(config, cls._where(config))
        if len(cells) == 1 and config["cell"].get("class_name") != "StackedRNNCells":
            c, cfg = cells[0]
            return CELL_CLASSES[c].weight_shapes(cfg)
        shapes, width = [], "in"
        for c, cfg in cells:
            one = CELL_CLASSES[c].weight_shapes(cfg)
            shapes.append([(width,) + tuple(one[0][1:])] + one[1:])
            width = int(cfg["units"])
        return [sh for j in StackedRNN.file_order(cells) for sh in shapes[j]]

    @classmethod
    def keras_order_of(cls, config):
        """File-order index of each weight in Keras' ``layer.weights`` order (cell by cell)."""
        cells = _cells_of(config, cls._where(config))
        per = [len(CELL_CLASSES[c].weight_shapes(cfg)) for c, cfg in cells]
        order = StackedRNN.file_order(cells) if config["cell"].get("class_name") == "StackedRNNCells" \
            else [0]
        start, pos = {}, 0
        for j in order:
            start[j] = pos
            pos += per[j]
        return [start[j] + i for j in range(len(cells)) for i in range(per[j])]

    def __new__(cls, config, weights, class_name=None):
        where = cls._where(config)
        if config.get("cell", {}).get("class_name") == "StackedRNNCells":
            return StackedRNN(config, weights, class_name or "RNN")
        (c, cfg), = _cells_of(config, where)
        merged = {**cfg, **{k: v for k, v in config.items() if k != "cell"}}
        return CELL_CLASSES[c](merged, weights, class_name or "RNN")


def stacked_step(xp_t, states, stack, saved=None):
    """Keras' ``StackedRNNCells`` as one step: cell 0 reads the input projection x_t W_0 + b_0;
    cell j > 0 reads cell j-1's new output h^{j-1}_t (its projection h^{j-1}_t W_j + b_j made
    here, per step); each advances its own states with its own step function. The output is
    the last cell's. States are held last cell first (``stack.slices``), so the output is
    states[0], as :func:`masked_scan` expects."""
    new = list(states)
    x, record = None, []
    for j, cell in enumerate(stack.cells):
        sl = stack.slices[j]
        if j:
            xp_t = cell.project_step(x)
        own = None if saved is None else []
        x_in = x
        x, new[sl] = type(cell).step(xp_t, states[sl], cell, own)
        if saved is not None:
            record.append((x_in, states[sl][0], own[0]))
    if saved is not None:
        saved.append(record)
    return x, tuple(new)


def stacked_step_backward(dstates, h_prev, saved, stack):
    """The cells' step-backwards in reverse: cell j gets dL/d(its output h^j_t) from its
    state gradient plus, for j < last, cell j+1's input gradient da_x^{j+1} W_{j+1}^T.
    Cells j > 0 add their weight gradients of this step to ``stack.step_grad_sums``; cell 0's
    projection gradients go back to the scan (its kernel gradient is one matmul over all
    timesteps, as a single cell's)."""
    dstates = list(dstates)
    d_in = None
    for j in range(len(stack.cells) - 1, -1, -1):
        cell, sl = stack.cells[j], stack.slices[j]
        x_j, h_prev_j, own = saved[j]
        ds = list(dstates[sl])
        if d_in is not None:
            ds[0] = ds[0] + d_in
        dx, dm, dstates[sl] = type(cell).step_backward(tuple(ds), h_prev_j, own, cell)
        if j:
            stack.add_step_grads(j, cell.step_grads(x_j, h_prev_j, own, dx, dm))
            d_in = dx @ cell.weights[0].T
        else:
            stack.add_step_grads(0, cell.step_grads(None, h_prev_j, own, dx, dm))
            dx0, dm0 = dx, dm
    return dx0, dm0, tuple(dstates)


class StackedRNN(RNNBase):
    """``RNN(StackedRNNCells([...]))``: the cells (SimpleRNN/LSTM/GRU cells, built as those
    layers on their slices of the weights) run as ONE step of :func:`masked_scan`
    (:func:`stacked_step`). ``return_state`` returns every cell's states, cell by cell
    (Keras flattens ``(output, *states)``); internally the last cell's states come first.

    Weights arrive in the ``.keras`` file's order: the stack's cells are saved as
    ``cells/<snake_case class>[_k]`` groups and read back sorted by that name
    (:meth:`file_order`); :attr:`keras_order` maps them to Keras' ``layer.weights``."""

    step = staticmethod(stacked_step)
    step_backward = staticmethod(stacked_step_backward)

    @staticmethod
    def file_order(cells):
        """Indices of the cells in the order the loader reads their weight groups."""
        used, names = {}, []
        for c, _ in cells:
            base = _CELL_PATHS[c]
            if base in used:
                used[base] += 1
                base = f"{base}_{used[base]}"
            else:
                used[base] = 0
            names.append(base)
        return sorted(range(len(cells)), key=lambda j: names[j])

    def __init__(self, config, weights, class_name=None):
        self.n_weights = len(weights)
        Layer.__init__(self, config, weights, class_name)
        where = RNN._where(config)
        cells = _cells_of(config, where)
        per = [len(CELL_CLASSES[c].weight_shapes(cfg)) for c, cfg in cells]
        self.keras_order = RNN.keras_order_of(config)
        in_keras = [weights[i] for i in self.keras_order]
        self.cells, pos = [], 0
        for (c, cfg), n in zip(cells, per):
            self.cells.append(CELL_CLASSES[c](cfg, in_keras[pos:pos + n], c))
            pos += n
        self._read_options(config)
        self.units = self.cells[-1].units
        self.use_bias = False  # the cells hold the biases
        counts = [cell.n_states() for cell in self.cells]
        last = counts[-1]
        self.slices, pos = [], last
        for k in counts[:-1]:
            self.slices.append(slice(pos, pos + k))
            pos += k
        self.slices.append(slice(0, last))

    def sublayers(self):
        return self.cells

    @property
    def kernel(self):
        return self.cells[0].kernel

    @property
    def input_bias(self):
        return self.cells[0].input_bias

    def n_states(self):
        return sum(cell.n_states() for cell in self.cells)

    def initial_states(self, n, xp=None):
        dt = self.kernel.dtype
        out = [None] * self.n_states()
        for cell, sl in zip(self.cells, self.slices):
            out[sl] = [np.zeros((n, cell.units), dt) for _ in range(cell.n_states())]
        return tuple(out)

    def keras_states(self, states):
        return [s for sl in self.slices for s in states[sl]]

    def scan_states(self, keras_states):
        out, pos = [None] * self.n_states(), 0
        for sl in self.slices:
            k = sl.stop - sl.start
            out[sl] = keras_states[pos:pos + k]
            pos += k
        return out

    def check_trainable(self, ctx):
        for cell in self.cells:
            cell.check_trainable(ctx)

    def add_step_grads(self, j, grads):
        acc = self._grad_sums[j]
        for i, g in enumerate(grads):
            if g is not None:
                acc[i] = g if acc[i] is None else acc[i] + g

    def backward(self, dy, need_dx=True):
        self._grad_sums = [[None] * len(cell.weights) for cell in self.cells]
        return super().backward(dy, need_dx)

    def weight_grads(self, x, tape, da_x, da_m, need_dx):
        """Cell 0's kernel gradient X^T da_x (one matmul over all timesteps); the rest were
        summed step by step. Returned in the file's order (as the weights)."""
        cell0 = self.cells[0]
        g = da_x.shape[-1]
        xt = x.transpose(1, 0, 2).reshape(-1, x.shape[2])
        self._grad_sums[0][0] = np.matmul(xt.T, da_x.reshape(-1, g))
        keras = []
        for cell, sums in zip(self.cells, self._grad_sums):
            keras.extend(np.zeros_like(w) if s is None else s.reshape(w.shape)
                         for w, s in zip(cell.weights, sums))
        grads = [None] * len(keras)
        for j, i in enumerate(self.keras_order):
            grads[i] = keras[j]
        dx = np.matmul(da_x, cell0.weights[0].T).transpose(1, 0, 2) if need_dx else None
        return grads, dx
