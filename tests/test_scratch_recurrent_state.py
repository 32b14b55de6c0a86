"""scratch_layers vs Keras: recurrent layers with several outputs and the generic RNN layer.

* ``return_state=True`` on SimpleRNN, LSTM and GRU (the output, then the states);
* ``keras.layers.RNN`` around SimpleRNNCell, LSTMCell, GRUCell and StackedRNNCells;
* a model with several outputs through predict, ``intermediate_outputs`` and
  ``python -m scratch_layers verify`` (node by node against float32 Keras and the float64
  twin, the further outputs of a call named ``layer[1]``, ...);
* gradients against ``tf.GradientTape`` on the float64 twin.
All with random non-default weights and masks (post, pre, interior padding, an all-padding row).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from backward_helpers import compare_gradients  # noqa: E402
from keras_factories import keras, randomize_weights, save_load  # noqa: E402

pytestmark = pytest.mark.scratch

V, T = 20, 6


def ids_batch(all_padding_row=True, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, V, (7, T))
    ids[1, 4:] = 0            # post-padding
    ids[2, :2] = 0            # pre-padding
    ids[3, [1, 3]] = 0        # interior
    if all_padding_row:
        ids[4] = 0
    return ids.astype("int32")


def flat(x):
    return [z for y in x for z in flat(y)] if isinstance(x, (list, tuple)) else [x]


def check_forward(m, x, tmp_path, seed=1):
    """Every node (each output of a several-output call too) against float32 Keras and the
    float64 twin (:func:`scratch_layers.verify.keras.layer_divergence`), and predict's
    structure and values. Returns (scratch model, worst vs twin, worst vs float32)."""
    from scratch_layers.verify.keras import layer_divergence, twin_tolerance  # noqa: F401

    randomize_weights(m, seed)
    sm, _ = save_load(m, tmp_path)
    rows = layer_divergence(m, sm, x)
    bad = [r for r in rows if r["max_abs_diff"] is None or r["allclose"] is False or r["twin_ok"] is False]
    assert not bad, bad
    got, ref = sm.predict(x, batch_size=3), m.predict(x, verbose=0)
    assert len(flat(got)) == len(flat(ref))
    for a, b in zip(flat(got), flat(ref)):
        assert np.allclose(a, b, atol=1e-5, rtol=1e-5)
    w64 = max(r["max_abs_diff_float64"] for r in rows)
    w32 = max(r["max_abs_diff"] for r in rows)
    print(f"forward max|diff| vs float64 twin {w64:.3g}, vs float32 {w32:.3g}")
    return sm, w64, w32


def head(k, tensors):
    """Flatten and concatenate ``tensors``, then Dense(3, softmax): a single loss output."""
    parts = [k.layers.Flatten()(t) if len(t.shape) > 2 else t for t in tensors]
    h = k.layers.Concatenate()(parts) if len(parts) > 1 else parts[0]
    return k.layers.Dense(3, activation="softmax")(h)


def check_gradients(m, x, tmp_path, seed=2):
    randomize_weights(m, seed)
    sm, _ = save_load(m, tmp_path, name="grad")
    return compare_gradients(m, sm, x, np.arange(len(x)) % 3)


def rnn(k, cell, **kw):
    if cell == "GRU-reset_before":
        return k.layers.GRU(reset_after=False, **kw)
    return getattr(k.layers, cell)(**kw)


CELLS = ["SimpleRNN", "LSTM", "GRU", "GRU-reset_before"]
OPTIONS = {
    "last": {},
    "sequences-backwards": dict(return_sequences=True, go_backwards=True),
    "zero_output_for_mask": dict(return_sequences=True, zero_output_for_mask=True),
}


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("cell", CELLS)
def test_return_state_forward(cell, options, tmp_path):
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    outs = rnn(k, cell, units=4, return_state=True, **OPTIONS[options])(e)
    n_states = 2 if cell == "LSTM" else 1
    assert len(outs) == 1 + n_states
    sm, _, _ = check_forward(k.Model(inp, list(outs)), ids_batch(), tmp_path)
    names = list(sm.intermediate_outputs(ids_batch()))
    lname = sm.layers[1].name
    assert names[-1 - n_states:] == [lname] + [f"{lname}[{j}]" for j in range(1, n_states + 1)]


@pytest.mark.parametrize("cell", CELLS)
def test_return_state_gradients(cell, tmp_path):
    """The states feed the loss (with and without the output), so BPTT starts from them."""
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    outs = list(rnn(k, cell, units=4, return_state=True, return_sequences=True, go_backwards=True)(e))
    check_gradients(k.Model(inp, head(k, outs)), ids_batch(), tmp_path)
    check_gradients(k.Model(inp, head(k, outs[1:2])), ids_batch(), tmp_path)


def test_return_state_into_a_second_rnn_as_its_states_source(tmp_path):
    """A state output read by a later layer (not only a model output)."""
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    seq, h, c = k.layers.LSTM(4, return_state=True, return_sequences=True)(e)
    y = k.layers.GRU(3)(seq)
    m = k.Model(inp, k.layers.Dense(3, activation="softmax")(k.layers.Concatenate()([y, h, c])))
    check_forward(m, ids_batch(), tmp_path)
    check_gradients(m, ids_batch(), tmp_path)


STACKS = {
    "LSTMCell": ["LSTMCell"],
    "GRUCell": ["GRUCell"],
    "SimpleRNNCell": ["SimpleRNNCell"],
    "GRU+LSTM+SimpleRNN": ["GRUCell", "LSTMCell", "SimpleRNNCell"],
    "LSTM+LSTM": ["LSTMCell", "LSTMCell"],
}


def rnn_of_cells(k, stack, **kw):
    cells = [getattr(k.layers, c)(u) for c, u in zip(STACKS[stack], [4, 3, 2])]
    cell = cells[0] if len(cells) == 1 else k.layers.StackedRNNCells(cells)
    return k.layers.RNN(cell, **kw)


@pytest.mark.parametrize("options", sorted(OPTIONS))
@pytest.mark.parametrize("stack", sorted(STACKS))
def test_rnn_of_cells_forward(stack, options, tmp_path):
    """The model's output is the RNN call itself: a stack's states nest per cell, and
    predict returns Keras' nested structure."""
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    out = rnn_of_cells(k, stack, return_state=True, **OPTIONS[options])(e)
    sm, _, _ = check_forward(k.Model(inp, out), ids_batch(), tmp_path)
    got, ref = sm.predict(ids_batch()), k.Model(inp, out).predict(ids_batch(), verbose=0)
    def shapes(x):  # the nesting and shapes (Keras' top level is a tuple, scratch's a list)
        return [shapes(v) for v in x] if isinstance(x, (list, tuple)) else np.shape(x)
    assert shapes(got) == shapes(ref)


def test_rnn_of_cells_single_output_and_bidirectional(tmp_path):
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    h = k.layers.Bidirectional(k.layers.RNN(k.layers.LSTMCell(4), return_sequences=True))(e)
    h = k.layers.RNN(k.layers.StackedRNNCells([k.layers.GRUCell(3), k.layers.SimpleRNNCell(2)]))(h)
    m = k.Model(inp, k.layers.Dense(3, activation="softmax")(h))
    check_forward(m, ids_batch(), tmp_path)
    check_gradients(m, ids_batch(), tmp_path)


@pytest.mark.parametrize("stack", sorted(STACKS))
def test_rnn_of_cells_gradients(stack, tmp_path):
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    outs = flat(rnn_of_cells(k, stack, return_state=True, return_sequences=True)(e))
    check_gradients(k.Model(inp, head(k, outs)), ids_batch(), tmp_path)


def test_stacked_cells_weight_order_and_set_weights(tmp_path):
    """The file stores a stack's cells by class name (gru_cell before lstm_cell); scratch's
    get_weights is Keras' order and set_weights round-trips."""
    k = keras()
    inp = k.Input((T, 3))
    out = rnn_of_cells(k, "GRU+LSTM+SimpleRNN", return_sequences=True)(inp)
    m = randomize_weights(k.Model(inp, out), 3)
    sm, _ = save_load(m, tmp_path)
    for a, b in zip(sm.get_weights(), m.get_weights()):
        assert a.shape == b.shape and np.array_equal(a, b)
    x = np.random.default_rng(0).normal(size=(4, T, 3)).astype("float32")
    before = sm.predict(x)
    sm.set_weights([w * 0.5 for w in sm.get_weights()])
    m.set_weights([w * 0.5 for w in m.get_weights()])
    assert not np.allclose(sm.predict(x), before)
    assert np.allclose(sm.predict(x), m.predict(x, verbose=0), atol=1e-5)


def test_verify_cli_on_a_model_with_several_outputs(tmp_path):
    k = keras()
    inp = k.Input((T,), dtype="int32")
    e = k.layers.Embedding(V, 3, mask_zero=True)(inp)
    outs = k.layers.LSTM(4, return_state=True, return_sequences=True, name="lstm")(e)
    m = randomize_weights(k.Model(inp, list(outs)), 4)
    path = os.path.join(str(tmp_path), "state.keras")
    m.save(path)
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-m", "scratch_layers", "verify", path, "-n", "8"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("lstm ", "lstm[1]", "lstm[2]"):
        assert name in res.stdout


def test_refusals():
    """stateful is refused with a reason; so is an unknown cell."""
    import scratch_layers
    from scratch_layers.errors import UnsupportedLayerError
    from scratch_layers.layers.recurrent import RNN

    w = [np.zeros((3, 4)), np.zeros((4, 4)), np.zeros(4)]
    with pytest.raises(UnsupportedLayerError, match="stateful"):
        scratch_layers.REGISTRY["SimpleRNN"]({"name": "s", "units": 4, "stateful": True}, w)
    with pytest.raises(UnsupportedLayerError, match="cell class"):
        RNN({"name": "r", "cell": {"class_name": "ConvLSTMCell", "config": {}}}, w)


def test_bidirectional_return_state_with_only_its_output_used(tmp_path):
    """Bidirectional(return_state) whose states no layer reads (it was refused before
    tests/test_scratch_bidirectional_state.py covered it): loads and matches Keras."""
    k = keras()
    inp = k.Input((T, 3))
    outs = k.layers.Bidirectional(k.layers.LSTM(2, return_state=True))(inp)
    x = np.random.default_rng(0).normal(size=(4, T, 3)).astype("float32")
    check_forward(k.Model(inp, outs[0]), x, tmp_path)
