"""The LSTM of the course assignment.

Gates from one matrix product, split in Keras' order (input, forget, candidate, output):
    z = x_t W + b + h_{t-1} U = [z_i | z_f | z_c | z_o]
    i = sigmoid(z_i), f = sigmoid(z_f), o = sigmoid(z_o), g = tanh(z_c)
    c_t = f * c_{t-1} + i * g,    h_t = o * tanh(c_t)
"""
from __future__ import annotations

import numpy as np

from .cnn import activation
from .rnn import RecurrentLayer


class LSTM(RecurrentLayer):
    n_states = 2   # (h, c)

    def __init__(self, config, weights):
        super().__init__(config, weights)
        self.recurrent_activation = activation(config.get("recurrent_activation", "sigmoid"))

    def step(self, xw, states):
        h, c = states
        z_i, z_f, z_c, z_o = np.split(xw + h @ self.recurrent, 4, axis=-1)
        i, f, o = self.recurrent_activation(z_i), self.recurrent_activation(z_f), self.recurrent_activation(z_o)
        c = f * c + i * self.activation(z_c)
        h = o * self.activation(c)
        return h, [h, c]


LAYERS = {"LSTM": LSTM}
