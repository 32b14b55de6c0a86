"""Layer base class and small helpers shared by all layer implementations."""

import math

import numpy as np

from ..errors import InputError, ModelFileError, NoBackwardError, UnsupportedLayerError


class Layer:
    """A Keras layer re-implemented for inference.

    Built from ``(config, weights)``: ``config`` is the layer's Keras config dict
    (as in ``config.json``), ``weights`` the list of its variables in Keras order
    (``layer.weights``), already cast to float64.

    ``forward(x, mask=None) -> y`` computes the layer on a batch; ``mask`` is the
    Keras mask (bool, shape (N, T)) of the incoming tensor or None.
    ``compute_mask(x, mask)`` returns the mask of the output (Keras semantics:
    layers with ``supports_masking`` pass it through, others drop it).
    """

    supports_masking = False
    n_weights = 0
    multi_input = False  # see MultiInputLayer
    input_kind = None    # "int" (token ids) or "string" (raw text) for layers that read those
    recurrent = False    # a loop over time: predict runs it in large chunks
    pads_each_batch = False  # output length follows each batch (TextVectorization without a fixed one)

    def __init__(self, config, weights, class_name=None):
        self.config = config
        self.class_name = class_name or type(self).__name__
        self.name = config.get("name", self.class_name.lower())
        if len(weights) != self.n_weights:
            raise ModelFileError(
                f"{self.class_name} layer '{self.name}': expected {self.n_weights} "
                f"weight arrays in the model file, found {len(weights)}")
        self.weights = list(weights)

    @classmethod
    def weight_shapes(cls, config):
        """The shape of each weight that ``config`` implies, checked against the file
        before any weight is read (see :func:`scratch_layers.saving.safety.check_weights`).
        A dimension may be a str symbol (equal wherever it recurs, e.g. the input
        width) and a whole shape may be None. Layers without weights return []."""
        return []

    # fusion --------------------------------------------------------------
    # Predict's plan asks a layer whether it can absorb the layer that alone reads its
    # output; layers answer from what they are, and the engine names no class.

    def absorb(self, following):
        """This layer followed by ``following``, as one layer with the same maths, or None."""
        return None

    def channel_affine(self, rank):
        """``(mul, add)`` when this layer is ``x * mul + add`` per channel of the last axis of
        a rank-``rank`` input at inference (BatchNormalization), else None."""
        return None

    def relu_ceiling(self):
        """``c`` when this layer is min(max(x, 0), c) and nothing else: ``math.inf`` for a
        plain ReLU, 6.0 for ReLU(max_value=6) or Activation('relu6'); else None."""
        return None

    def is_plain_relu(self):
        """Whether this layer is max(x, 0) and nothing else."""
        return self.relu_ceiling() == math.inf

    def absorb_zero_padding(self, pads):
        """This layer run on its input zero-padded by ``pads`` ((top, bottom), (left, right),
        a ZeroPadding2D before it) as one layer, or None."""
        return None

    def max_pool_window(self):
        """``(pool, strides, padding)`` when this layer is 2-D max pooling, else None."""
        return None

    def workspace_per_sample(self, output_size):
        """Elements held besides input and output while this layer runs, per sample whose
        output has ``output_size`` elements (a convolution's im2col buffer)."""
        return 0

    def walk(self):
        """This layer, then every layer inside it, depth first."""
        yield self
        for sub in self.sublayers():
            yield from sub.walk()

    def forward(self, x, mask=None):
        raise NotImplementedError

    def compute_mask(self, x, mask):
        return mask if self.supports_masking else None

    def split_call(self, args, kwargs):
        """A single-input layer's call: ``layer(x)`` (the ``mask`` kwarg Keras records is the
        mask of ``x`` itself, which the executor propagates)."""
        if len(args) != 1 or not is_tensor(args[0]):
            raise UnsupportedLayerError(
                f"{self.class_name} layer '{self.name}' is called on {str(args)[:120]}; it takes "
                "exactly one tensor")
        extra = [k for k, v in kwargs.items() if k not in ("mask", "training") and _has_tensor(v)]
        if extra:
            raise UnsupportedLayerError(f"{self.class_name} layer '{self.name}' receives tensors "
                                        f"through {extra}, which scratch_layers does not support")
        return [args[0]], {}


    def __call__(self, x, mask=None):
        return self.forward(x, mask)

    # training ------------------------------------------------------------
    # ``forward_train(x, mask, ctx) -> y`` is ``forward`` that also keeps (in
    # ``self._saved``) what ``backward`` needs; ``ctx`` is a
    # :class:`scratch_layers.training.backward.TrainContext` (training flag, RNG).
    # ``backward(dy, need_dx=True) -> (dx, grads)``: dL/dx (None when ``need_dx`` is
    # False or the input has no gradient, e.g. token ids) and dL/dw for each trainable
    # weight, in Keras order (see :meth:`trainable_flags`).

    def forward_train(self, x, mask, ctx):
        raise self.no_backward()

    def backward(self, dy, need_dx=True):
        raise self.no_backward()

    def no_backward(self, what=""):
        return NoBackwardError(
            f"{self.class_name} layer '{self.name}'{' ' + what if what else ''} has no backward "
            "pass in scratch_layers, so loss_and_gradients/train_on_batch cannot run this model "
            "(predict still works). See scratch_layers/README.md, 'Training', for the layers "
            "that have one.")

    def trainable_flags(self):
        """Whether each weight (Keras order) is trainable: all of them unless the layer
        was saved with ``trainable=False`` (BatchNormalization overrides this)."""
        return [bool(self.config.get("trainable", True))] * len(self.weights)

    def set_weights(self, weights):
        """Replace the weights (Keras order, already in the compute dtype): the layer is
        rebuilt from its config, so every derived array (folded, reordered, cached) is
        recomputed."""
        if len(weights) != len(self.weights):
            raise InputError(f"{self.class_name} layer '{self.name}': set_weights got "
                             f"{len(weights)} arrays, expected {len(self.weights)}")
        for new, old in zip(weights, self.weights):
            if np.shape(new) != np.shape(old):
                raise InputError(f"{self.class_name} layer '{self.name}': weight of shape "
                                 f"{np.shape(new)} given, expected {np.shape(old)}")
        if not self.weights:
            return
        keep = {k: v for k, v in vars(self).items() if k in self.KEEP_ON_SET_WEIGHTS}
        fresh = self._rebuilt(list(weights))
        self.__dict__.clear()
        self.__dict__.update(vars(fresh), **keep)

    KEEP_ON_SET_WEIGHTS = ("weight_paths",)

    def _rebuilt(self, weights):
        """A new layer of this class from the same config with ``weights``."""
        return type(self)(self.config, weights, self.class_name)

    def sublayers(self):
        """The layers this layer runs inside it (a wrapper's wrapped layers, attention's
        projections): whatever walks layers (casting, training checks) walks these too."""
        return []

    def __repr__(self):
        return f"<{self.class_name} '{self.name}'>"

    # helpers -------------------------------------------------------------
    def unsupported(self, option, value, hint=""):
        return UnsupportedLayerError(
            f"{self.class_name} layer '{self.name}': unsupported option "
            f"{option}={value!r}{'; ' + hint if hint else ''}")

    def require(self, option, allowed, default=None):
        """Read ``config[option]`` and raise a clear error if it is not allowed."""
        value = self.config.get(option, default)
        if isinstance(value, list):
            value = tuple(value)
        if value not in allowed:
            raise self.unsupported(option, value, f"supported: {sorted(map(repr, allowed))}")
        return value

    def sizes(self, option, n, default):
        """``config[option]`` as an n-tuple of positive ints (sizes, strides, dilations)."""
        return positive_sizes(self.config.get(option, default), n,
                              f"{self.class_name} layer '{self.name}'", option)

    def check_rank(self, x, rank, what="input"):
        if x.ndim != rank:
            raise InputError(
                f"{self.class_name} layer '{self.name}': expected a rank-{rank} {what} "
                f"(batch first), got shape {x.shape}")

    def check_last_dim(self, x, expected):
        if x.shape[-1] != expected:
            raise InputError(
                f"{self.class_name} layer '{self.name}': expected last dimension "
                f"{expected} (channels/features), got input shape {x.shape}")


def as_tuple(v, n):
    """Keras accepts int or tuple for sizes/strides; normalise to an n-tuple."""
    if isinstance(v, (list, tuple)):
        if len(v) == 1 and n > 1:
            return tuple(int(v[0]) for _ in range(n))
        return tuple(int(i) for i in v)
    return tuple(int(v) for _ in range(n))


def positive_sizes(value, n, where, option):
    """:func:`as_tuple`, refusing what Keras refuses (0 or negative sizes/strides would
    divide by zero or loop forever at predict time)."""
    sizes = as_tuple(value, n)
    if len(sizes) != n or min(sizes) < 1:
        raise ModelFileError(f"{where}: {option}={value!r} must be {n} positive integer(s); "
                             "the file was not written by Keras or is corrupt")
    return sizes


def same_padding(size, k, stride, dilation=1):
    """TensorFlow 'same' padding along one axis.

    out = ceil(size / stride); pad_total = max((out-1)*stride + (k-1)*dilation + 1 - size, 0);
    pad_before = pad_total // 2 (the extra cell goes after: bottom/right).
    Returns (out, pad_before, pad_after)."""
    out = -(-size // stride)
    eff = (k - 1) * dilation + 1
    total = max((out - 1) * stride + eff - size, 0)
    return out, total // 2, total - total // 2


def valid_out(size, k, stride, dilation=1):
    return (size - ((k - 1) * dilation + 1)) // stride + 1


class KeepsInputOutput:
    """Mixin for weightless layers whose backward needs only their input and output:
    forward_train keeps ``(x, y)`` in ``self._saved`` for :meth:`backward`."""

    def forward_train(self, x, mask, ctx):
        y = self.forward(x, mask)
        self._saved = (x, y)
        return y


class KeepsPreactivation:
    """Mixin for layers ``y = activation(z)``, ``z = self._z(x)`` (the affine part, input
    checks included): forward_train keeps ``(x, z, y)`` in ``self._saved``, what
    ``activations.backward`` and the weight gradients need."""

    def forward_train(self, x, mask, ctx):
        z = self._z(x)
        y = self.activation(z)
        self._saved = (x, z, y)
        return y


class TensorRef:
    """A reference, in a Functional config, to the output of a node: ``(layer name,
    node_index, tensor_index)`` (``keras_history``). :meth:`Layer.split_call` receives
    a call's ``args``/``kwargs`` with every ``__keras_tensor__`` replaced by one of these."""
    __slots__ = ("layer", "node_index", "tensor_index")

    def __init__(self, layer, node_index=0, tensor_index=0):
        self.layer, self.node_index, self.tensor_index = layer, node_index, tensor_index

    def key(self):
        return (self.layer, self.node_index, self.tensor_index)

    def __repr__(self):
        return f"TensorRef{self.key()}"


def is_tensor(obj):
    return isinstance(obj, TensorRef)


class MultiInputLayer(Layer):
    """A layer called on several tensors (merges, attention, operation nodes).

    The graph executor calls ``forward(xs, masks, **options)``: ``xs`` the input arrays in
    the order :meth:`split_call` gave (None for an absent optional input), ``masks`` their
    Keras masks (None each when absent), ``options`` the call's non-tensor arguments.
    ``compute_mask(xs, masks, **options)`` gives the output mask (default: None).
    Training: ``forward_train(xs, masks, ctx, **options)`` and
    ``backward(dy, need_dx=True) -> (dxs, grads)`` with one dx per input (None where it
    has no gradient or is absent)."""

    multi_input = True

    def split_call(self, args, kwargs):
        """Keras call ``(args, kwargs)`` -> ``(inputs, options)``: the tensors this call
        reads, as a list of :class:`TensorRef` (None for an absent optional input), and
        its non-tensor options. Default: Keras' merge call ``layer([a, b, ...])``."""
        inputs = args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else list(args)
        if not inputs or not all(is_tensor(t) for t in inputs):
            raise ModelFileError(f"{self.class_name} layer '{self.name}': expected to be called on "
                                 f"a list of tensors, got {str(args)[:120]}")
        return list(inputs), {}

    def compute_mask(self, xs, masks, **options):
        return None


def _has_tensor(obj):
    if is_tensor(obj):
        return True
    if isinstance(obj, dict):
        return any(_has_tensor(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_has_tensor(v) for v in obj)
    return False


def axis_list(value):
    """A Keras ``axis`` config (int, list, or None/[] for "no axis") as a list of ints."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(a) for a in value]
    return [int(value)]


def keras_ordered(layer, per_weight):
    """A per-weight list of ``layer`` (its own order) in Keras' ``layer.weights`` order:
    they differ for layers with sub-layers, e.g. MultiHeadAttention (``keras_order``)."""
    order = getattr(layer, "keras_order", None)
    return list(per_weight) if order is None else [per_weight[i] for i in order]


def from_keras_order(layer, per_weight):
    """The inverse of :func:`keras_ordered`."""
    order = getattr(layer, "keras_order", None)
    if order is None:
        return list(per_weight)
    out = [None] * len(order)
    for j, i in enumerate(order):
        out[i] = per_weight[j]
    return out


# Config keys whose presence changes Keras' training step (extra loss terms, projections
# after the update) in ways scratch_layers does not reproduce.
REGULARIZER_OPTIONS = ("kernel_regularizer", "bias_regularizer", "recurrent_regularizer",
                 "activity_regularizer", "embeddings_regularizer", "beta_regularizer",
                 "gamma_regularizer", "depthwise_regularizer", "alpha_regularizer",
                 "pointwise_regularizer")
CONSTRAINT_OPTIONS = ("kernel_constraint", "bias_constraint", "recurrent_constraint",
                "embeddings_constraint", "beta_constraint", "gamma_constraint",
                "depthwise_constraint", "alpha_constraint", "pointwise_constraint")
