"""The sequence layers of the course assignment: Embedding, SimpleRNN, Bidirectional,
GlobalAveragePooling1D, and the loop over time that SimpleRNN and LSTM share.

Masking (``Embedding(mask_zero=True)``): id 0 is padding.  At a padded step an RNN keeps
its state unchanged, and its output there is 0 (``zero_output_for_mask=True``, which
Bidirectional sets) or the previous output; the average over time counts the real
steps only.
"""
from __future__ import annotations

import numpy as np

from .cnn import activation


class Embedding:
    """y[n, t] = E[ids[n, t]]; with mask_zero the mask is ids != 0."""

    def __init__(self, config, weights):
        self.table = weights[0]
        self.mask_zero = config.get("mask_zero", False)

    def forward(self, ids, mask=None):
        ids = np.asarray(ids)
        if ids.min(initial=0) < 0 or ids.max(initial=0) >= len(self.table):
            raise ValueError(f"Embedding: ids must lie in [0, {len(self.table)})")
        return self.table[ids], (ids != 0) if self.mask_zero else None


def run_over_time(step, x_proj, units, n_states, mask, go_backwards, zero_output_for_mask,
                  return_sequences):
    """Apply ``step(x_proj[:, t], states) -> (output, states)`` for t = 0..T-1 (T-1..0 when
    ``go_backwards``), with state 0 at the start.  ``x_proj`` is the input already multiplied
    by the kernel (one matrix product for all steps).  Returns the outputs in the order
    processed (N, T, units), or the last one (N, units)."""
    n, steps = x_proj.shape[:2]
    states = [np.zeros((n, units)) for _ in range(n_states)]
    out = np.zeros((n, units))
    outputs = []
    for t in (range(steps - 1, -1, -1) if go_backwards else range(steps)):
        new_out, new_states = step(x_proj[:, t], states)
        if mask is not None:   # a padded step keeps the state; its output is 0 or the previous one
            keep = mask[:, t, None]
            new_states = [np.where(keep, new, old) for new, old in zip(new_states, states)]
            new_out = np.where(keep, new_out, 0.0 if zero_output_for_mask else out)
        out, states = new_out, new_states
        outputs.append(out)
    return np.stack(outputs, axis=1) if return_sequences else out


class RecurrentLayer:
    """Shared options of SimpleRNN and LSTM: weights (kernel W, recurrent kernel U, bias b)
    under ``cell/vars`` in the weights file."""
    n_states = 1

    def __init__(self, config, weights):
        for option in ("stateful", "return_state", "unroll"):
            if config.get(option):
                raise NotImplementedError(f"{type(self).__name__}: {option}=True is not implemented")
        self.units = config["units"]
        self.kernel, self.recurrent = weights[0], weights[1]
        self.bias = weights[2] if config.get("use_bias", True) else 0.0
        self.activation = activation(config.get("activation", "tanh"))
        self.go_backwards = config.get("go_backwards", False)
        self.return_sequences = config.get("return_sequences", False)
        self.zero_output_for_mask = config.get("zero_output_for_mask", False)

    def forward(self, x, mask=None):
        y = run_over_time(self.step, x @ self.kernel + self.bias, self.units, self.n_states, mask,
                          self.go_backwards, self.zero_output_for_mask, self.return_sequences)
        return y, mask if self.return_sequences else None


class SimpleRNN(RecurrentLayer):
    """h_t = activation(x_t W + b + h_{t-1} U)."""

    def step(self, xw, states):
        h = self.activation(xw + states[0] @ self.recurrent)
        return h, [h]


class Bidirectional:
    """The layer forwards and a copy backwards (``go_backwards``) over the same sequence;
    the backward outputs are reversed back into time order, then the two are merged."""

    MERGES = {"concat": lambda a, b: np.concatenate([a, b], axis=-1), "sum": np.add,
              "mul": np.multiply, "ave": lambda a, b: (a + b) / 2}

    def __init__(self, config, forward_layer, backward_layer):
        if config.get("merge_mode", "concat") not in self.MERGES:
            raise NotImplementedError(f"Bidirectional: merge_mode={config.get('merge_mode')!r} is not implemented")
        self.merge = self.MERGES[config.get("merge_mode", "concat")]
        self.forward_layer, self.backward_layer = forward_layer, backward_layer

    def forward(self, x, mask=None):
        a, out_mask = self.forward_layer.forward(x, mask)
        b, _ = self.backward_layer.forward(x, mask)
        if self.backward_layer.return_sequences:
            b = b[:, ::-1]
        return self.merge(a, b), out_mask


class GlobalAveragePooling1D:
    """Mean over time; with a mask, over the real (unmasked) steps only."""

    def __init__(self, config, weights):
        if config.get("keepdims") or config.get("data_format", "channels_last") != "channels_last":
            raise NotImplementedError("GlobalAveragePooling1D: only keepdims=False, channels_last")

    def forward(self, x, mask=None):
        if mask is None:
            return x.mean(axis=1), None
        m = mask[..., None].astype(x.dtype)
        return (x * m).sum(axis=1) / m.sum(axis=1), None


LAYERS = {"Embedding": Embedding, "SimpleRNN": SimpleRNN, "GlobalAveragePooling1D": GlobalAveragePooling1D}
