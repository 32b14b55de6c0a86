"""Running a :class:`~scratch_layers.graph.Graph`: predict's plan (fusions), liveness, and
one generic loop over the plan's steps.

A *step* reads tensor ids and writes one. Most steps are one node. Where an intermediate
tensor has a single consumer (and is not a model output) predict fuses, with exactly the
layers' maths:

* Conv2D(linear) -> BatchNormalization -> [ReLU] folds into one Conv2D: BN at inference
  is ``y * mul + add`` per channel, so ``conv(x, W) * mul + add == conv(x, W * mul) + add``
  (to float64 rounding, ~1e-16 relative).
* Conv2D(relu/linear) -> MaxPooling2D pools the raw convolution first and adds bias and
  activation afterwards: ``max(x + b) = max(x) + b`` and ``relu(max(x)) = max(relu(x))``
  hold exactly in floating point (monotonic ops), and the bias/relu passes touch 4x less
  data. The convolution runs in blocks of images (:func:`conv_then_max_pool`), so only
  the pooled output is held whole.
* Embedding -> RNN folds the table into the RNN's input projection:
  ``(E @ W + b)[ids] == E[ids] @ W + b``.

After each step, every tensor whose last reader has run is freed, so a chunk holds only
the live tensors, not every intermediate.
"""
from __future__ import annotations

import numpy as np

from .. import activations
from ..layers.conv import Conv2D
from ..layers.core import Embedding
from ..layers.depthwise_conv import DepthwiseConv2D
from ..layers.pooling import MaxPooling2D, tf_max_floor
from ..layers.recurrent import RNNBase
from ..layers.wrappers import Bidirectional
from .fusions import conv_then_max_pool, fold_batchnorm, foldable, is_plain_relu


class Step(tuple):
    """One step of the plan: a tuple of the layers it runs — ``(layer,)``, ``(conv, pool)``
    (fused, convolved block by block) or ``("embed_rnn", embedding, rnn)`` — with the
    tensor ids it reads (``inputs``), writes (``output``), the graph nodes it covers
    (``nodes``) and its call options."""

    def __new__(cls, layers, inputs, output, nodes, options=None):
        step = super().__new__(cls, layers)
        step.inputs, step.output, step.nodes, step.options = list(inputs), output, list(nodes), options or {}
        return step


def plan_steps(graph, fuse=True):
    """Predict's plan for ``graph``: a list of :class:`Step` (``fuse=False``: one per node)."""
    nodes = graph.nodes
    consumers = graph.consumers()
    outputs = set(graph.outputs)

    def sole_consumer(i):
        """The node that alone reads node i's output (and only through one input), or None."""
        t = nodes[i].output
        readers = consumers.get(t, [])
        if t in outputs or len(readers) != 1:
            return None
        j = readers[0]
        return j if nodes[j].inputs == [t] and not getattr(nodes[j].layer, "multi_input", False) else None

    steps, done = [], set()
    for i, node in enumerate(nodes):
        if i in done:
            continue
        layer = node.layer
        if not fuse or getattr(layer, "multi_input", False):
            steps.append(Step((layer,), node.inputs, node.output, [node], node.options))
            continue
        nxt = sole_consumer(i)
        if isinstance(layer, Embedding) and nxt is not None and isinstance(nodes[nxt].layer, (RNNBase, Bidirectional)):
            steps.append(Step(("embed_rnn", layer, nodes[nxt].layer), node.inputs, nodes[nxt].output,
                              [node, nodes[nxt]]))
            done.add(nxt)
            continue
        chain, last = [i], i
        if nxt is not None and foldable(layer, nodes[nxt].layer):
            bn = nodes[nxt].layer
            chain.append(nxt)
            after = sole_consumer(nxt)
            relu = after is not None and is_plain_relu(nodes[after].layer)
            if relu:
                chain.append(after)
            layer = fold_batchnorm(layer, bn, relu)
            last = chain[-1]
        pool = sole_consumer(last)
        if (isinstance(layer, Conv2D) and pool is not None and isinstance(nodes[pool].layer, MaxPooling2D)
                and layer.activation in (activations.relu, activations.linear)):
            chain.append(pool)
            covered = [nodes[j] for j in chain]
            steps.append(Step((layer, nodes[pool].layer), node.inputs, nodes[pool].output, covered))
        else:
            covered = [nodes[j] for j in chain]
            steps.append(Step((layer,), node.inputs, nodes[chain[-1]].output, covered, node.options))
        done.update(chain)
    # a fused chain runs at its first node's place: its later nodes read only the chain
    return steps


def last_uses(steps, keep):
    """tensor id -> index of the last step that reads it (tensors in ``keep`` are never freed)."""
    last = {}
    for i, step in enumerate(steps):
        for t in step.inputs:
            if t is not None and t not in keep:
                last[t] = i
    frees = [[] for _ in steps]
    for t, i in last.items():
        frees[i].append(t)
    return frees


def run_step(step, xs, masks):
    """``(output, mask)`` of one step on its input arrays and masks."""
    head = step[0]
    if head == "embed_rnn":
        emb, rnn = step[1], step[2]
        ids = emb.check_ids(xs[0])
        mask = emb.compute_mask(ids, None)
        return rnn.forward_ids(ids, mask, emb.table), rnn.compute_mask(None, mask)
    if len(step) == 2:
        conv, pool = step
        y = conv_then_max_pool(conv, pool, xs[0])
        relu = conv.activation is activations.relu
        if not relu:
            tf_max_floor(y)
        if conv.bias is not None:
            y += conv.bias
        if relu:  # fmax: a window of only NaN gives relu(lowest + b) = 0, as in Keras
            np.fmax(y, 0.0, out=y)
        return y, None
    if getattr(head, "multi_input", False):
        return head.forward(xs, masks, **step.options), head.compute_mask(xs, masks, **step.options)
    return head.forward(xs[0], masks[0]), head.compute_mask(xs[0], masks[0])


def run(graph, steps, frees, inputs, on_output=None, run_step=run_step):
    """Run ``steps`` on the input arrays (one per graph input); returns the outputs' arrays.
    ``on_output(step, y, live)``, when given, sees every step's output and the live tensors
    (id -> array, before the step's dead inputs are freed); ``run_step`` computes one step
    (the load-time check wraps it)."""
    values = dict(zip(graph.inputs, inputs))
    masks = dict.fromkeys(graph.inputs)
    for step, free in zip(steps, frees):
        xs = [None if t is None else values[t] for t in step.inputs]
        ms = [None if t is None else masks[t] for t in step.inputs]
        y, mask = run_step(step, xs, ms)
        values[step.output], masks[step.output] = y, mask
        if on_output is not None:
            on_output(step, y, values)
        for t in free:
            del values[t], masks[t]
    return [values[t] for t in graph.outputs]


def elements_per_sample(graph, steps, frees, probe):
    """The most array elements one sample holds at once while the plan runs on ``probe``
    (one sample per input): at each step the larger of its largest input and its output
    (plus a convolution's im2col buffer), plus every other live tensor (a skip
    connection waiting for its merge). A fused step that convolves in blocks holds only
    its input and its pooled output."""
    per = max((np.asarray(x).size for x in probe), default=1)

    def measure(step, y, live):
        nonlocal per
        out = np.asarray(y).size
        layer = step[0]
        if isinstance(layer, (Conv2D, DepthwiseConv2D)) and len(step) == 1:
            k = layer.kernel
            out += out // k.shape[-1] * k.shape[0] * k.shape[1] * k.shape[2]
        read = [np.asarray(live[t]).size for t in step.inputs if t is not None]
        others = sum(np.asarray(v).size for t, v in live.items()
                     if t not in step.inputs and t != step.output)
        per = max(per, max(read + [out]) + others)
    run(graph, steps, frees, probe, on_output=measure)
    return per
