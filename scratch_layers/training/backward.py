"""The backward walk: the loss's gradient for every weight, and one training step, equal to
Keras (the loss is in :mod:`.loss`, Adam in :mod:`.optimizers`).

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
from dataclasses import dataclass, field

import numpy as np

from ..engine import executor
from ..engine.inputs import as_compute, prepare_inputs
from ..errors import NoBackwardError
from ..layers.core import Dense
from ..layers.layer import CONSTRAINT_OPTIONS, REGULARIZER_OPTIONS, Layer, keras_ordered
from .loss import _labels, _logits_output, sparse_categorical_crossentropy


@dataclass
class TrainContext:
    """What ``Layer.forward_train`` needs besides its input: ``training`` (batch statistics
    in BatchNormalization, Dropout active), the RNG Dropout draws its mask from, and
    what random augmentation layers do in training mode ("error" or "identity")."""
    training: bool = False
    rng: np.random.Generator = field(default_factory=np.random.default_rng)
    augmentation: str = "error"


# ----------------------------------------------------------------------------- backward

def check_trainable(model):
    """Refuse what changes Keras' training step beyond loss + gradients + Adam."""
    for layer in model.layers:
        for sub in layer.walk():
            bad = [k for k in REGULARIZER_OPTIONS + CONSTRAINT_OPTIONS if sub.config.get(k)]
            if bad:
                raise NoBackwardError(
                    f"{sub.class_name} layer '{sub.name}' has {', '.join(bad)}: Keras adds "
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
    xs = as_compute(model, prepare_inputs(model, x))
    ctx = TrainContext(bool(training), np.random.default_rng(seed), augmentation)
    flags = {id(layer): layer.trainable_flags() for layer in model.layers}
    for node in graph.nodes:  # the internal nodes that pick one output of a call have none
        flags.setdefault(id(node.layer), [])
    counts = _call_counts(graph)
    # tensors that depend on a trainable weight carry a gradient
    needs = set()
    for node in graph.nodes:
        if any(flags[id(node.layer)]) or any(t in needs for t in node.inputs if t is not None):
            needs.add(node.output)
    instances, masks = [], {}

    def train_step(step, args, margs):
        """One node in training: a copy of the layer per call where it is shared."""
        node, = step.nodes
        train = node.output in needs or _has_forward_train(node.layer)
        inst = _instance(node.layer, counts[id(node.layer)]) if train else node.layer
        if train and counts[id(node.layer)] > 1 and training and hasattr(node.layer, "state_updates"):
            raise NoBackwardError(f"{node.layer.class_name} layer '{node.layer.name}' is called "
                                  f"{counts[id(node.layer)]} times; training mode with its moving "
                                  "statistics updated per call is not supported")
        y, masks[node.output] = _forward_train(inst, node, args, margs, ctx, train)
        instances.append(inst if train else None)
        return y, masks[node.output]

    steps = executor.plan_steps(graph, fuse=False)
    out, = executor.run(graph, steps, executor.last_uses(steps, set(graph.outputs)), xs, run_step=train_step)
    out_t = graph.outputs[0]
    mask = masks.get(out_t)
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
