"""The loss: Keras' ``SparseCategoricalCrossentropy`` and its gradient, from logits or from
probabilities (clipped first, as Keras does)."""
from __future__ import annotations

import numpy as np

from .. import activations
from ..errors import InputError
from ..layers.activation import Activation, Softmax
from ..layers.core import Dense
from ..ops import KERAS_EPSILON

# ----------------------------------------------------------------------------- loss

def cross_entropy_from_logits(z, labels):
    """Per-sample -log softmax(z)[y] and its gradient softmax(z) - onehot(y)
    (tf.nn.sparse_softmax_cross_entropy_with_logits)."""
    shifted = z - z.max(axis=-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    rows = np.arange(len(labels))
    losses = -log_p[rows, labels]
    grad = np.exp(log_p)
    grad[rows, labels] -= 1.0
    return losses, grad


def sparse_categorical_crossentropy(output, labels, from_logits):
    """Keras' SparseCategoricalCrossentropy() (mean over the batch) and dL/d(output).

    ``from_logits``: ``output`` is the logits z of a softmax output (see the module
    docstring); otherwise probabilities, clipped to [eps, 1-eps] then used as logits
    log(p) (tf.clip_by_value passes the gradient only inside the range)."""
    n = len(labels)
    if from_logits:
        losses, grad = cross_entropy_from_logits(output, labels)
        return float(losses.sum() / n), grad / n
    eps = output.dtype.type(KERAS_EPSILON)
    clipped = np.clip(output, eps, 1 - eps)
    losses, grad_log = cross_entropy_from_logits(np.log(clipped), labels)
    inside = (output >= eps) & (output <= 1 - eps)
    return float(losses.sum() / n), np.where(inside, grad_log / clipped, 0.0) / n


_LOGIT_ACTIVATIONS = (activations.softmax, activations.sigmoid)


def _logits_output(layer):
    """Whether Keras computes the loss from this output layer's pre-activation z (its
    softmax/sigmoid output carries ``_keras_logits``)."""
    if isinstance(layer, Dense):
        return layer.activation in _LOGIT_ACTIVATIONS
    if isinstance(layer, Activation):
        return layer.fn in _LOGIT_ACTIVATIONS
    return isinstance(layer, Softmax) and layer.axis in (-1,)


def _labels(y, n, n_classes):
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (n,):
        raise InputError(f"labels must have shape ({n},) (integer class ids, one per sample), "
                         f"got shape {labels.shape}")
    if labels.dtype.kind == "f" and np.all(labels == np.round(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise InputError(f"labels must be integer class ids, got dtype {labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= n_classes):
        raise InputError(f"labels must be in [0, {n_classes}) (the model has {n_classes} "
                         f"outputs), got values in [{labels.min()}, {labels.max()}]")
    return labels.astype(np.int64)
