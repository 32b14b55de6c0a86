"""Optimizers: Keras' Adam update, step for step."""
from __future__ import annotations

import math

import numpy as np

# ----------------------------------------------------------------------------- optimizer

class Adam:
    """``keras.optimizers.Adam`` (keras/src/optimizers/adam.py, amsgrad off). At step t:
    lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t);  m += (g - m)(1 - beta_1);
    v += (g^2 - v)(1 - beta_2);  w -= lr_t m / (sqrt(v) + epsilon).
    The moments are created on the first :meth:`apply`, one per weight, in order.

    Two details of Keras' TensorFlow backend, reproduced: the powers beta^t use beta
    rounded to float32 (``ops.cast(self.beta_1, dtype)`` makes a float32 tensor of the
    Python float first, also in a float64 model); and an Embedding table's gradient is
    a tf.IndexedSlices (one slice per token position) whose slices are squared *before*
    duplicates are summed, so for the table g^2 is replaced by the sum of the squared
    per-position gradients (``squares``)."""

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
        self.learning_rate = float(learning_rate)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)
        self.iterations = 0
        self.momentums = None
        self.velocities = None

    def apply(self, weights, grads, squares=None):
        """The weights after one step (new arrays; ``weights`` is not modified).
        ``squares``: per weight, None (use g^2) or the g^2 term of a sliced gradient."""
        if len(weights) != len(grads):
            raise ValueError(f"Adam.apply: {len(weights)} weights but {len(grads)} gradients")
        if self.momentums is None:
            self.momentums = [np.zeros_like(w) for w in weights]
            self.velocities = [np.zeros_like(w) for w in weights]
        elif [m.shape for m in self.momentums] != [np.shape(w) for w in weights]:
            raise ValueError("Adam.apply: the weights differ from those of the previous steps; "
                             "use one optimizer per model")
        self.iterations += 1
        t = self.iterations
        b1, b2 = float(np.float32(self.beta_1)), float(np.float32(self.beta_2))
        alpha = self.learning_rate * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        squares = squares or [None] * len(grads)
        out = []
        for w, g, g2, m, v in zip(weights, grads, squares, self.momentums, self.velocities):
            m += (g - m) * (1 - self.beta_1)
            v += ((np.square(g) if g2 is None else g2) - v) * (1 - self.beta_2)
            out.append(w - (m * alpha) / (np.sqrt(v) + self.epsilon))
        return out
