"""Merge layers (keras/src/layers/merging): Add, Subtract, Multiply, Average, Maximum,
Minimum, Concatenate and Dot, forward and backward.

Keras' rules, reproduced here:

* ``Merge.call``: when the inputs' ranks differ, each lower-rank input is expanded at
  axis 1 until the ranks match; the elementwise op then broadcasts. An expanded input is
  a new tensor, so its Keras mask is lost inside the merge (only full-rank inputs keep
  theirs): see :meth:`Merge._prepare`.
* Multiply, Maximum and Minimum read the input masks in their computation
  (``Multiply`` treats masked entries as 1 and zeroes the output outside the OR of the
  masks when every input has one; ``Maximum``/``Minimum`` follow
  ``Merge._apply_merge_op_and_or_mask``). Add, Subtract, Average, Concatenate and Dot
  ignore them.
* Output mask: ``Merge.compute_mask`` is None when any input mask is None, else the OR of
  the masks; Concatenate has its own rule (:meth:`Concatenate.compute_mask`); Dot: None.

Backward: ``forward_train(xs, masks, ctx)`` keeps what ``backward(dy) -> (dxs, [])``
needs. Every input is broadcast to the output shape first, so its gradient is the
broadcast-shape gradient summed back to the input's shape (what TensorFlow's
BroadcastGradientArgs does). Ties in Maximum/Minimum route the gradient as TF's
``_MaximumGrad``/``_MinimumGrad``: to the first operand (the running result) where
``a >= b`` (``a <= b``).
"""
import copy

import numpy as np

from ..errors import InputError, ModelFileError
from ..ops import l2_normalize, l2_normalize_grad, sum_to_shape
from .layer import MultiInputLayer


def _or_all(masks):
    out = masks[0]
    for m in masks[1:]:
        out = np.logical_or(out, m)
    return out


class Merge(MultiInputLayer):
    """Elementwise merge of n inputs; subclasses define :meth:`merge` (and :meth:`merge_grad`).

    ``merge(xs, bmasks)`` gets the inputs broadcast to the output shape and their masks
    broadcast likewise (None where absent or lost by rank expansion) and returns
    ``(y, state)``; ``merge_grad(dy, xs, bmasks, y, state)`` returns one gradient per input,
    in the output shape."""

    supports_masking = True
    n_inputs = None  # exact number of inputs, when Keras requires one
    uses_masks = False

    def _check_count(self, xs):
        if self.n_inputs is not None and len(xs) != self.n_inputs:
            raise InputError(f"{self.class_name} layer '{self.name}' takes exactly "
                             f"{self.n_inputs} inputs, got {len(xs)}")
        if not xs:
            raise InputError(f"{self.class_name} layer '{self.name}' got no input")

    def _prepare(self, xs, masks):
        """Rank expansion at axis 1 (Merge.call), broadcast to the common shape; the masks
        of the inputs Keras reads (full-rank ones) broadcast as Keras does
        (``broadcast_to(expand_dims(mask, -1), x.shape)``)."""
        self._check_count(xs)
        xs = [np.asarray(x) for x in xs]
        masks = list(masks) if masks is not None else [None] * len(xs)
        rank = max(x.ndim for x in xs)
        expanded, kept = [], []
        for x, m in zip(xs, masks):
            if x.ndim < rank:
                x = x.reshape(x.shape[:1] + (1,) * (rank - x.ndim) + x.shape[1:])
                m = None  # the expanded tensor carries no mask in Keras
            expanded.append(x)
            kept.append(m)
        try:
            shape = np.broadcast_shapes(*(x.shape for x in expanded))
        except ValueError:
            raise InputError(f"{self.class_name} layer '{self.name}': inputs of shapes "
                             f"{[x.shape for x in xs]} do not broadcast") from None
        bmasks = []
        if self.uses_masks:
            for x, m in zip(expanded, kept):
                if m is not None:
                    m = np.broadcast_to(np.expand_dims(np.asarray(m, bool), -1), x.shape)
                    m = np.broadcast_to(m, shape)
                bmasks.append(m)
        else:
            bmasks = [None] * len(xs)
        return xs, [np.broadcast_to(x, shape) for x in expanded], bmasks

    def forward(self, xs, masks=None):
        _, bx, bm = self._prepare(xs, masks)
        return self.merge(bx, bm)[0]

    def forward_train(self, xs, masks, ctx):
        orig, bx, bm = self._prepare(xs, masks)
        y, state = self.merge(bx, bm)
        self._saved = ([x.shape for x in orig], bx, bm, y, state)
        return y

    def backward(self, dy, need_dx=True):
        shapes, bx, bm, y, state = self._saved
        grads = self.merge_grad(dy, bx, bm, y, state)
        dxs = []
        for g, x, shape in zip(grads, bx, shapes):
            expanded = shape[:1] + (1,) * (len(x.shape) - len(shape)) + tuple(shape[1:])
            dxs.append(sum_to_shape(np.asarray(g), expanded).reshape(shape))
        return dxs, []

    def compute_mask(self, xs, masks=None, **options):
        """Merge.compute_mask: None when any mask is None, else the OR of the masks."""
        if masks is None or not len(masks) or any(m is None for m in masks):
            return None
        return _or_all([np.asarray(m, bool) for m in masks])


class Add(Merge):
    relu = False  # set on the copy that absorbed a following ReLU (predict's plan)

    def absorb(self, following):
        """Add then a plain ReLU, as one pass: relu applied in place on the fresh sum
        (ResNet's residual joins)."""
        if self.relu or not following.is_plain_relu():
            return None
        fused = copy.copy(self)
        fused.relu = True
        return fused

    def merge(self, xs, masks):
        y = np.add(xs[0], xs[1]) if len(xs) > 1 else np.array(xs[0])  # a fresh array
        for x in xs[2:]:
            y += x
        if self.relu:
            np.maximum(y, 0, out=y)
        return y, None

    def merge_grad(self, dy, xs, masks, y, state):
        return [dy] * len(xs)


class Subtract(Merge):
    n_inputs = 2

    def merge(self, xs, masks):
        return xs[0] - xs[1], None

    def merge_grad(self, dy, xs, masks, y, state):
        return [dy, -dy]


class Average(Merge):
    def merge(self, xs, masks):
        y = xs[0]
        for x in xs[1:]:
            y = y + x
        return y / len(xs), None

    def merge_grad(self, dy, xs, masks, y, state):
        g = dy / len(xs)
        return [g] * len(xs)


class Multiply(Merge):
    """Keras' Multiply: a masked input counts as 1 outside its mask; when every input has
    a mask the product is zeroed outside their OR."""

    uses_masks = True

    def merge(self, xs, masks):
        factors = [x if m is None else np.where(m, x, np.ones((), x.dtype))
                   for x, m in zip(xs, masks)]
        y = factors[0]
        for f in factors[1:]:
            y = y * f
        out_mask = _or_all(masks) if all(m is not None for m in masks) else None
        if out_mask is not None:
            y = np.where(out_mask, y, np.zeros((), y.dtype))
        return np.array(y), (factors, out_mask)

    def merge_grad(self, dy, xs, masks, y, state):
        factors, out_mask = state
        g = dy if out_mask is None else np.where(out_mask, dy, 0)
        n = len(factors)
        # product of the other factors: prefix * suffix (no division, zeros are fine)
        prefix = [None] * n
        acc = None
        for i in range(n):
            prefix[i] = acc
            acc = factors[i] if acc is None else acc * factors[i]
        grads = [None] * n
        acc = None
        for i in reversed(range(n)):
            other = prefix[i] if acc is None else (acc if prefix[i] is None else prefix[i] * acc)
            gi = g if other is None else g * other
            if masks[i] is not None:
                gi = np.where(masks[i], gi, 0)
            grads[i] = gi
            acc = factors[i] if acc is None else factors[i] * acc
        return grads


class _MaxMin(Merge):
    """Merge._apply_merge_op_and_or_mask with ``op`` = maximum/minimum, step by step:
    x <- where(mask_x, x, out); out <- where(out_mask, out, x); out_mask <- out_mask | mask_x
    (None once either is None); out <- op(out, x)."""

    uses_masks = True

    def merge(self, xs, masks):
        out, out_mask = xs[0], masks[0]
        steps = []
        for x, m in zip(xs[1:], masks[1:]):
            if m is not None:
                x = np.where(m, x, out)
            om = out_mask
            if om is not None:
                out = np.where(om, out, x)
            out_mask = np.logical_or(om, m) if (m is not None and om is not None) else None
            first = self.select(out, x)  # where the running result (first operand) wins
            steps.append((m, om, first))
            out = np.where(first, out, x)
        return np.array(out), steps

    def merge_grad(self, dy, xs, masks, y, steps):
        grads = [None] * len(xs)
        g_out = dy
        for i in reversed(range(1, len(xs))):
            m, om, first = steps[i - 1]
            g_x = np.where(first, 0, g_out)
            g_out = np.where(first, g_out, 0)
            if om is not None:  # out <- where(om, out, x)
                g_x = g_x + np.where(om, 0, g_out)
                g_out = np.where(om, g_out, 0)
            if m is not None:  # x <- where(m, x, out)
                g_out = g_out + np.where(m, 0, g_x)
                g_x = np.where(m, g_x, 0)
            grads[i] = g_x
        grads[0] = g_out
        return grads


class Maximum(_MaxMin):
    @staticmethod
    def select(a, b):
        return a >= b  # TF _MaximumGrad: the first operand gets the gradient where a >= b


class Minimum(_MaxMin):
    @staticmethod
    def select(a, b):
        return a <= b  # TF _MinimumGrad: where a <= b


class Concatenate(MultiInputLayer):
    """ops.concatenate(inputs, axis) (no rank expansion; the shapes must agree off-axis)."""

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        axis = config.get("axis", -1)
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ModelFileError(f"Concatenate layer '{self.name}': axis={axis!r} is not an int")
        self.axis = axis

    def forward(self, xs, masks=None):
        xs = [np.asarray(x) for x in xs]
        if not xs or len({x.ndim for x in xs}) != 1:
            raise InputError(f"Concatenate layer '{self.name}': inputs of shapes "
                             f"{[x.shape for x in xs]} (equal ranks needed)")
        try:
            return np.concatenate(xs, axis=self.axis)
        except (ValueError, np.exceptions.AxisError) as e:
            raise InputError(f"Concatenate layer '{self.name}': cannot concatenate shapes "
                             f"{[x.shape for x in xs]} on axis {self.axis}: {e}") from None

    def forward_train(self, xs, masks, ctx):
        y = self.forward(xs, masks)
        self._saved = [np.shape(x)[self.axis] for x in xs]
        return y

    def backward(self, dy, need_dx=True):
        cuts = np.cumsum(self._saved)[:-1]
        return list(np.split(dy, cuts, axis=self.axis)), []

    def compute_mask(self, xs, masks=None, **options):
        """Concatenate.compute_mask: None if every mask is None; else each input's mask
        (all True where absent, expanded at -1 and broadcast to the input when of lower
        rank) concatenated on ``axis``, then ``any`` over the last axis."""
        if masks is None or all(m is None for m in masks):
            return None
        full = []
        for x, m in zip(xs, masks):
            x = np.asarray(x)
            if m is None:
                full.append(np.ones(x.shape, bool))
            elif np.ndim(m) < x.ndim:
                full.append(np.broadcast_to(np.expand_dims(np.asarray(m, bool), -1), x.shape))
            else:
                full.append(np.asarray(m, bool))
        return np.any(np.concatenate(full, axis=self.axis), axis=-1)


class Dot(MultiInputLayer):
    """Keras Dot: ``batch_dot`` of two inputs over ``axes`` (int or pair; negative axes
    count from each input's rank), optionally l2-normalising each along its axis first.
    Output: x's axes (less the contracted one) then y's (less batch and contracted); two
    rank-2 inputs give (batch, 1)."""

    supports_masking = True  # Keras sets it; its compute_mask returns None

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        axes = config.get("axes", -1)
        if isinstance(axes, (list, tuple)):
            if len(axes) != 2 or not all(isinstance(a, int) and not isinstance(a, bool)
                                         for a in axes):
                raise ModelFileError(f"Dot layer '{self.name}': axes={axes!r} must be an int "
                                     "or two ints")
            self.axes = tuple(axes)
        elif isinstance(axes, int) and not isinstance(axes, bool):
            self.axes = axes
        else:
            raise ModelFileError(f"Dot layer '{self.name}': axes={axes!r} must be an int or two ints")
        self.normalize = bool(config.get("normalize", False))

    def _axes(self, x, y):
        if isinstance(self.axes, int):
            axes = ([self.axes % x.ndim, self.axes % y.ndim] if self.axes < 0
                    else [self.axes] * 2)
        else:
            axes = [a % v.ndim if a < 0 else a for a, v in zip(self.axes, (x, y))]
        if x.ndim < 2 or y.ndim < 2 or 0 in axes or axes[0] >= x.ndim or axes[1] >= y.ndim \
                or x.shape[0] != y.shape[0] or x.shape[axes[0]] != y.shape[axes[1]]:
            raise InputError(f"Dot layer '{self.name}': cannot contract shapes {x.shape} and "
                             f"{y.shape} over axes {axes} (batch axis 0 excluded)")
        return axes

    def _check(self, xs):
        if len(xs) != 2:
            raise InputError(f"Dot layer '{self.name}' takes exactly 2 inputs, got {len(xs)}")
        return np.asarray(xs[0]), np.asarray(xs[1])

    def forward(self, xs, masks=None):
        return self._run(*self._check(xs), keep=False)

    def forward_train(self, xs, masks, ctx):
        return self._run(*self._check(xs), keep=True)

    def _run(self, x, y, keep):
        a0, a1 = self._axes(x, y)
        x0, y0 = x, y
        nx = ny = None
        if self.normalize:
            x, nx = l2_normalize(x, a0)
            y, ny = l2_normalize(y, a1)
        xm = np.moveaxis(x, a0, -1)   # (B, X..., K)
        ym = np.moveaxis(y, a1, 1)    # (B, K, Y...)
        b, k = xm.shape[0], xm.shape[-1]
        x3 = xm.reshape(b, -1, k)
        y3 = ym.reshape(b, k, -1)
        out = np.matmul(x3, y3)
        shape = xm.shape[:-1] + ym.shape[2:]
        if len(shape) == 1:
            shape = shape + (1,)
        if keep:
            self._saved = (x0, y0, a0, a1, x3, y3, xm.shape, ym.shape, nx, ny)
        return out.reshape(shape)

    def backward(self, dy, need_dx=True):
        x0, y0, a0, a1, x3, y3, xms, yms, nx, ny = self._saved
        d3 = dy.reshape(x3.shape[0], x3.shape[1], y3.shape[2])
        dx = np.moveaxis(np.matmul(d3, np.swapaxes(y3, 1, 2)).reshape(xms), -1, a0)
        dyy = np.moveaxis(np.matmul(np.swapaxes(x3, 1, 2), d3).reshape(yms), 1, a1)
        if self.normalize:
            dx = l2_normalize_grad(x0, dx, a0, *nx)
            dyy = l2_normalize_grad(y0, dyy, a1, *ny)
        return [dx, dyy], []
