"""Training from scratch: the loss, its gradients (backward pass) and Adam, equal to Keras.

* :func:`loss_and_gradients` runs the model's layers one by one (``forward_train``, never
  the fused predict plan), computes Keras' ``SparseCategoricalCrossentropy()`` and walks
  the layers in reverse with each layer's ``backward``; the gradients come out aligned
  with ``keras_model.trainable_weights``.
* :class:`Adam` is ``keras.optimizers.Adam``'s update.
* :func:`train_on_batch` is one training-mode step: forward, backward, Adam update and
  the BatchNormalization moving statistics, in place.

The loss, as Keras computes it (``keras/src/backend/tensorflow/nn.py``,
``sparse_categorical_crossentropy`` and ``_get_logits``): Keras' softmax and sigmoid
keep their input z on the output tensor (``_keras_logits``), and the loss then uses z as
softmax logits: ``l_n = logsumexp(z_n) - z_n[y_n]``, ``dl/dz = softmax(z) - onehot(y)``,
no clipping. So a model ending in softmax (a Dense or Activation with
``activation="softmax"``, or a Softmax layer) gets the exact cross-entropy, and one
ending in sigmoid gets the softmax cross-entropy of its pre-sigmoid values (Keras'
behaviour, reproduced). Any other output p is clipped to [eps, 1 - eps] (eps = 1e-7)
and used as logits log(p): ``l_n = -log(p_y / sum p)``, with zero gradient where p was
clipped. The loss is the mean over the batch.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from . import activations
from .base import Layer
from .core import Activation, Dense, Softmax
from .errors import InputError, NoBackwardError
from .model import keras_ordered

EPSILON = 1e-7  # keras.backend.epsilon()

# Config keys whose presence changes Keras' training step (extra loss terms, projections
# after the update) in ways scratch_layers does not reproduce.
_REGULARIZERS = ("kernel_regularizer", "bias_regularizer", "recurrent_regularizer",
                 "activity_regularizer", "embeddings_regularizer", "beta_regularizer",
                 "gamma_regularizer", "depthwise_regularizer", "alpha_regularizer",
                 "pointwise_regularizer")
_CONSTRAINTS = ("kernel_constraint", "bias_constraint", "recurrent_constraint",
                "embeddings_constraint", "beta_constraint", "gamma_constraint",
                "depthwise_constraint", "alpha_constraint", "pointwise_constraint")


@dataclass
class TrainContext:
    """What ``Layer.forward_train`` needs besides its input: ``training`` (batch statistics
    in BatchNormalization, Dropout active), the RNG Dropout draws its mask from, and
    what random augmentation layers do in training mode ("error" or "identity")."""
    training: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    augmentation: str = "error"


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
    eps = output.dtype.type(EPSILON)
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


# ----------------------------------------------------------------------------- backward

def check_trainable(model):
    """Refuse what changes Keras' training step beyond loss + gradients + Adam."""
    for layer in model.layers:
        cfgs = [layer.config] + [sub.config for sub in (getattr(layer, "forward_layer", None),
                                                        getattr(layer, "backward_layer", None)) if sub]
        for cfg in cfgs:
            bad = [k for k in _REGULARIZERS + _CONSTRAINTS if cfg.get(k)]
            if bad:
                raise NoBackwardError(
                    f"{layer.class_name} layer '{layer.name}' has {', '.join(bad)}: Keras adds "
                    "regularization losses / applies constraints in training, which "
                    "scratch_layers does not reproduce. Remove them to train with scratch_layers.")


def _has_forward_train(layer):
    return type(layer).forward_train is not Layer.forward_train


def _call_counts(graph):
    counts = {}
    for node in graph.nodes:
        counts[id(node.layer)] = counts.get(id(node.layer), 0) + 1
    return counts


def _instance(layer, calls):
    """The object that runs one call in training: the layer itself, or for a layer called
    several times a copy per call (each keeps its own forward values for its backward;
    the gradients of the copies add up to the layer's)."""
    return layer if calls == 1 else copy.deepcopy(layer)


def _forward_train(inst, node, xs, masks, ctx, train):
    """Output and mask of one node in training (``train``: keep what backward needs)."""
    if getattr(inst, "multi_input", False):
        run = inst.forward_train if train else (lambda a, m, c, **o: inst.forward(a, m, **o))
        return run(xs, masks, ctx, **node.options), inst.compute_mask(xs, masks, **node.options)
    y = inst.forward_train(xs[0], masks[0], ctx) if train else inst.forward(xs[0], masks[0])
    return y, inst.compute_mask(xs[0], masks[0])


def _add(grads, t, g):
    grads[t] = g if t not in grads else grads[t] + g


def forward_backward(model, x, y, training=False, seed=None, augmentation="error"):
    """(loss, grads, ctx): the loss of ``model`` on (x, y) and its gradient for every
    trainable weight, in the order of ``keras_model.trainable_weights``.

    The nodes run in topological order; the backward walks them in reverse. A tensor read
    by several nodes gets the sum of their gradients, and a layer called several times
    gets the sum of its calls' weight gradients."""
    if augmentation not in ("error", "identity"):
        raise ValueError(f"augmentation must be 'error' or 'identity', got {augmentation!r}")
    check_trainable(model)
    graph = model.graph
    if len(graph.outputs) != 1:
        raise NoBackwardError(
            f"model '{model.name}' has {len(graph.outputs)} outputs; loss_and_gradients and "
            "train_on_batch support single-output models (Keras' per-output losses and loss "
            "weights are not reproduced). Build a single-output model over the output to train.")
    xs = model._as_compute(model._prepare(x))
    ctx = TrainContext(bool(training), np.random.default_rng(seed), augmentation)
    flags = {id(layer): layer.trainable_flags() for layer in model.layers}
    counts = _call_counts(graph)
    # tensors that depend on a trainable weight carry a gradient
    needs = set()
    for node in graph.nodes:
        if any(flags[id(node.layer)]) or any(t in needs for t in node.inputs if t is not None):
            needs.add(node.output)
    values = dict(zip(graph.inputs, xs))
    masks = dict.fromkeys(graph.inputs)
    instances = []
    for node in graph.nodes:
        train = node.output in needs or _has_forward_train(node.layer)
        inst = _instance(node.layer, counts[id(node.layer)]) if train else node.layer
        if train and counts[id(node.layer)] > 1 and training and hasattr(node.layer, "state_updates"):
            raise NoBackwardError(f"{node.layer.class_name} layer '{node.layer.name}' is called "
                                  f"{counts[id(node.layer)]} times; training mode with its moving "
                                  "statistics updated per call is not supported")
        args = [None if t is None else values[t] for t in node.inputs]
        margs = [None if t is None else masks[t] for t in node.inputs]
        values[node.output], masks[node.output] = _forward_train(inst, node, args, margs, ctx, train)
        instances.append(inst if train else None)
    out_t = graph.outputs[0]
    out, mask = values[out_t], masks[out_t]
    if mask is not None or out.ndim != 2:
        raise NoBackwardError(f"the model's output has shape {out.shape}"
                              f"{' and a mask' if mask is not None else ''}; the loss supports "
                              "(batch, classes) outputs without a mask")
    labels = _labels(y, out.shape[0], out.shape[1])
    last_node = next((n for n in graph.nodes if n.output == out_t), None)
    last = instances[graph.nodes.index(last_node)] if last_node is not None else None
    from_logits = last is not None and out_t in needs and _logits_output(last)
    if from_logits:
        logits = last._saved[1] if isinstance(last, Dense) else last._saved[0]
        loss, dy = sparse_categorical_crossentropy(logits, labels, True)
    else:
        loss, dy = sparse_categorical_crossentropy(out, labels, False)
    grads_of = {out_t: dy}
    weight_grads = {}
    for node, inst in zip(reversed(graph.nodes), reversed(instances)):
        dy = grads_of.pop(node.output, None)
        if dy is None or inst is None:
            continue
        need_dx = any(t in needs for t in node.inputs if t is not None)
        if node is last_node and from_logits:
            dx, g = inst.backward(dy, need_dx, wrt_preactivation=True)
        else:
            dx, g = inst.backward(dy, need_dx)
        dxs = dx if getattr(inst, "multi_input", False) else [dx]
        for t, d in zip(node.inputs, dxs or []):
            if t is not None and d is not None and t in needs:
                _add(grads_of, t, d)
        key = id(node.layer)
        g = list(g or [None] * len(flags[key]))
        if key in weight_grads:
            weight_grads[key] = [a if b is None else (b if a is None else a + b)
                                 for a, b in zip(weight_grads[key], g)]
        else:
            weight_grads[key] = g
    grads = []
    for layer in model.layers:
        f = flags[id(layer)]
        per = weight_grads.get(id(layer)) or [None] * len(f)
        for w, keep, gw in keras_ordered(layer, list(zip(layer.weights, f, per))):
            if keep:
                grads.append(np.zeros_like(w) if gw is None else gw.reshape(w.shape))
    return loss, grads, ctx


def train_on_batch(model, x, y, optimizer, seed=None, augmentation="error"):
    """One Keras training step in place: training-mode forward, backward, ``optimizer``
    update of the trainable weights, BatchNormalization moving statistics
    (moving = moving * momentum + batch * (1 - momentum)). Returns the batch's loss before
    the update."""
    loss, grads, _ = forward_backward(model, x, y, True, seed, augmentation)
    new, trainable, squares = [], [], []
    for layer in model.layers:  # every list in Keras' weight order
        updated = layer.state_updates() if hasattr(layer, "state_updates") else None
        ws = list(updated) if updated is not None else list(layer.weights)
        sq = layer.gradient_squares() if hasattr(layer, "gradient_squares") else [None] * len(ws)
        ws, sq, current = (keras_ordered(layer, v) for v in (ws, sq, layer.weights))
        for j, keep in enumerate(keras_ordered(layer, layer.trainable_flags())):
            if keep:
                trainable.append((len(new) + j, current[j]))
                squares.append(sq[j])
        new.extend(ws)
    stepped = optimizer.apply([w for _, w in trainable], grads, squares)
    for (pos, _), w in zip(trainable, stepped):
        new[pos] = w
    model.set_weights(new)
    return loss


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
