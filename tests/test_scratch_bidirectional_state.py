"""scratch_layers vs Keras: ``Bidirectional`` with several outputs.

* ``return_state=True``: the (merged) output, then the forward layer's final states, then
  the backward layer's (``keras/src/layers/rnn/bidirectional.py``);
* ``merge_mode=None``: the forward and the backward output unmerged (with
  ``return_state``: both outputs, then the states);
around SimpleRNN, LSTM, GRU (and an RNN of stacked cells), with random non-default
weights and masks (post, pre, interior padding, an all-padding row). Forward: every node,
each output of the call too, against float32 Keras and the float64 twin; gradients against
``tf.GradientTape`` on the twin, with each output, only the states, or only one
direction's output feeding the loss.
"""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from keras_factories import keras, randomize_weights, save_load  # noqa: E402
from test_scratch_recurrent_state import (  # noqa: E402
    T, V, check_forward, check_gradients, flat, head, ids_batch, rnn, rnn_of_cells)

pytestmark = pytest.mark.scratch

CELLS = ["SimpleRNN", "LSTM", "GRU"]
N_STATES = {"SimpleRNN": 1, "LSTM": 2, "GRU": 1}
# merge mode, return_sequences
MERGES = {
    "concat-last": ("concat", False),
    "sum-sequences": ("sum", True),
    "ave-last": ("ave", False),
    "mul-sequences": ("mul", True),
    "none-sequences": (None, True),
    "none-last": (None, False),
}


def embedded(k):
    inp = k.Input((T,), dtype="int32")
    return inp, k.layers.Embedding(V, 3, mask_zero=True)(inp)


def bidirectional(k, cell, merge, return_sequences, return_state=True, **kw):
    layer = rnn(k, cell, units=4, return_sequences=return_sequences, return_state=return_state, **kw)
    return k.layers.Bidirectional(layer, merge_mode=merge, name="bi")


@pytest.mark.parametrize("merge", sorted(MERGES))
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_return_state_forward(cell, merge, tmp_path):
    """The outputs in Keras' order, each against float32 Keras and the twin, and named
    ``bi``, ``bi[1]``, ... by intermediate_outputs."""
    k = keras()
    mode, seqs = MERGES[merge]
    inp, e = embedded(k)
    outs = list(bidirectional(k, cell, mode, seqs)(e))
    n_out = (2 if mode is None else 1) + 2 * N_STATES[cell]
    assert len(outs) == n_out
    sm, _, _ = check_forward(k.Model(inp, outs), ids_batch(), tmp_path)
    names = list(sm.intermediate_outputs(ids_batch()))
    assert names[-n_out:] == ["bi"] + [f"bi[{j}]" for j in range(1, n_out)]
    # the states are the two layers' own: the forward's first (h for a full row: the
    # backward's last output at t = 0 of a sequence is its final h)
    got = sm.predict(ids_batch())
    states = got[(2 if mode is None else 1):]
    assert all(s.shape == (7, 4) for s in states)
    if seqs and mode is None:
        assert np.allclose(got[1][0, 0], states[N_STATES[cell]][0], atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_merge_none_without_state(cell, tmp_path):
    """merge_mode=None alone: two outputs, each with the mask when return_sequences (a
    second RNN reads the backward one); also through the Embedding-folded path of predict."""
    k = keras()
    inp, e = embedded(k)
    y, y_rev = bidirectional(k, cell, None, True, return_state=False)(e)
    z = k.layers.GRU(3, name="after")(y_rev)
    check_forward(k.Model(inp, [y, z]), ids_batch(), tmp_path)
    k2 = keras()
    inp, e = embedded(k2)
    outs = bidirectional(k2, cell, None, False, return_state=False)(e)
    check_forward(k2.Model(inp, list(outs)), ids_batch(), tmp_path)


@pytest.mark.parametrize("merge", ["concat-last", "mul-sequences", "none-sequences", "ave-last"])
@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_return_state_gradients(cell, merge, tmp_path):
    """All outputs feed the loss; then only the states (the merged output unused: BPTT
    starts from the final states alone); then the last (merged) output and the forward
    layer's first state (the backward layer's states unused; with merge_mode None the
    forward output unused too)."""
    k = keras()
    mode, seqs = MERGES[merge]
    inp, e = embedded(k)
    outs = list(bidirectional(k, cell, mode, seqs)(e))
    n_merged = 2 if mode is None else 1
    check_gradients(k.Model(inp, head(k, outs)), ids_batch(), tmp_path)
    check_gradients(k.Model(inp, head(k, outs[n_merged:])), ids_batch(), tmp_path)
    check_gradients(k.Model(inp, head(k, outs[n_merged - 1:n_merged + 1])), ids_batch(), tmp_path)


@pytest.mark.parametrize("cell", CELLS)
def test_bidirectional_merge_none_gradients(cell, tmp_path):
    """merge_mode=None without states: the backward output through a second RNN (its mask
    passed on), the forward one directly."""
    k = keras()
    inp, e = embedded(k)
    y, y_rev = bidirectional(k, cell, None, True, return_state=False)(e)
    check_gradients(k.Model(inp, head(k, [y, k.layers.SimpleRNN(2)(y_rev)])), ids_batch(), tmp_path)


def test_bidirectional_state_with_its_own_backward_layer_and_float_input(tmp_path):
    """A backward_layer with its own activations, on float input with a Masking layer."""
    k = keras()
    x = np.random.default_rng(3).normal(size=(6, T, 3)).astype("float32")
    x[1, 4:] = 0.0
    x[2, :2] = 0.0
    x[3, 2] = 0.0
    inp = k.Input((T, 3))
    m = k.layers.Masking(0.0)(inp)
    fwd = k.layers.LSTM(4, return_sequences=True, return_state=True)
    bwd = k.layers.LSTM(4, activation="relu", recurrent_activation="tanh", return_sequences=True,
                        return_state=True, go_backwards=True)
    outs = list(k.layers.Bidirectional(fwd, backward_layer=bwd, name="bi")(m))
    assert len(outs) == 1 + 2 + 2
    check_forward(k.Model(inp, outs), x, tmp_path)
    check_gradients(k.Model(inp, head(k, outs)), x, tmp_path)


def test_bidirectional_of_stacked_cells_with_state_as_the_model_output(tmp_path):
    """Bidirectional(RNN(StackedRNNCells), return_state): each direction's states nest per
    cell (Keras' structure); the call is the model's output, so predict nests them too."""
    k = keras()
    inp, e = embedded(k)
    out = k.layers.Bidirectional(rnn_of_cells(k, "GRU+LSTM+SimpleRNN", return_state=True,
                                              return_sequences=True), name="bi")(e)
    m = k.Model(inp, out)
    sm, _, _ = check_forward(m, ids_batch(), tmp_path)
    got, ref = sm.predict(ids_batch()), m.predict(ids_batch(), verbose=0)

    def shapes(x):
        return [shapes(v) for v in x] if isinstance(x, (list, tuple)) else np.shape(x)
    assert shapes(got) == shapes(ref)
    k2 = keras()
    inp, e = embedded(k2)
    outs = flat(k2.layers.Bidirectional(rnn_of_cells(k2, "LSTM+LSTM", return_state=True))(e))
    check_gradients(k2.Model(inp, head(k2, outs)), ids_batch(), tmp_path)


def test_predict_classes_of_nested_and_several_outputs(tmp_path):
    """predict_classes keeps predict's structure (a list, nested lists), argmax per array."""
    k = keras()
    inp, e = embedded(k)
    out = k.layers.Bidirectional(rnn_of_cells(k, "GRU+LSTM+SimpleRNN", return_state=True))(e)
    m = randomize_weights(k.Model(inp, out), 7)
    sm, _ = save_load(m, tmp_path)
    x = ids_batch()
    got, probs = sm.predict_classes(x), sm.predict(x)

    def check(c, p):
        if isinstance(p, list):
            assert isinstance(c, list) and len(c) == len(p)
            for a, b in zip(c, p):
                check(a, b)
        else:
            assert np.array_equal(c, np.argmax(p, axis=-1))
    check(got, probs)
    assert any(isinstance(c, list) for c in got)  # the LSTM cells' states nest


def test_bidirectional_refusals():
    """Forward and backward layers must agree on return_state (Keras' check), and differ
    in go_backwards."""
    from scratch_layers.errors import ModelFileError, UnsupportedLayerError
    from scratch_layers.layers.recurrent import GRU, LSTM
    from scratch_layers.layers.wrappers import Bidirectional

    w = [np.zeros((3, 16)), np.zeros((4, 16)), np.zeros(16)]
    f = LSTM({"name": "f", "units": 4, "return_state": True}, w)
    b = LSTM({"name": "b", "units": 4, "go_backwards": True}, w)
    with pytest.raises(ModelFileError, match="return_state"):
        Bidirectional({"name": "bi"}, w + w, wrapped=[f, b])
    with pytest.raises(UnsupportedLayerError, match="go_backwards"):
        Bidirectional({"name": "bi"}, w + w, wrapped=[f, f])
    with pytest.raises(UnsupportedLayerError, match="merge_mode"):
        Bidirectional({"name": "bi", "merge_mode": "max"}, w + w, wrapped=[f, b])
    gru = GRU({"name": "g", "units": 4, "return_state": True, "go_backwards": True, "reset_after": False},
              [np.zeros((3, 12)), np.zeros((4, 12)), np.zeros(12)])
    with pytest.raises(UnsupportedLayerError, match="numbers of states"):
        Bidirectional({"name": "bi"}, w + gru.weights, wrapped=[f, gru])
