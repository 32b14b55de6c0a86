"""Preprocessing layers that compute at inference: ``Rescaling``, ``Normalization``, and the
categorical ones, ``CategoryEncoding`` and ``Discretization`` with the encoding maths that
Hashing and the lookup layers share (``encode_categorical``)."""
import numpy as np

from ..errors import InputError, ModelFileError
from ..ops import KERAS_EPSILON
from .bounds import check_sample_elements
from .layer import Layer, axis_list
from .text import decode_input


class Rescaling(Layer):
    """y = x * scale + offset."""

    supports_masking = True

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.scale = np.asarray(config.get("scale", 1.0), dtype=np.float64)
        self.offset = np.asarray(config.get("offset", 0.0), dtype=np.float64)
        if isinstance(config.get("scale"), dict) or isinstance(config.get("offset"), dict):
            raise self.unsupported("scale/offset", "tensor")

    def forward(self, x, mask=None):
        return x * self.scale + self.offset

    def forward_train(self, x, mask, ctx):
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy * self.scale, []


class Normalization(Layer):
    """Keras' ``Normalization`` preprocessing layer (keras/src/layers/preprocessing/normalization.py):
    y = (x - mean) / max(sqrt(variance), eps), eps = ``keras.backend.epsilon()`` = 1e-7;
    with ``invert=True`` y = mean + x max(sqrt(variance), eps).

    ``mean``/``variance`` hold one value per index of the kept ``axis`` (all other axes,
    the batch included, share them; ``axis=None`` saves ``[]``: one scalar). They come
    from the file's weights ``mean, variance, count`` (after ``adapt()``; count is unused
    at inference) or, when given to the constructor, from the config (a scalar, or an
    array aligned right to left with the kept axes; rounded to float32 as Keras does). Nothing is trainable; backward:
    dx = dy / std (dy std with invert)."""

    @classmethod
    def weight_shapes(cls, config):
        """mean and variance (one size per kept axis) and the scalar count; none when the
        config holds mean/variance."""
        if config.get("mean") is not None:
            return []
        keep = tuple(f"axis{i}" for i in range(len(axis_list(config.get("axis", [-1])))))
        return [keep, keep, ()]

    def __init__(self, config, weights, class_name=None):
        from_config = config.get("mean") is not None
        self.n_weights = 0 if from_config else 3
        super().__init__(config, weights, class_name)
        self.axis = axis_list(config.get("axis", [-1]))
        self.invert = bool(config.get("invert", False))
        if from_config:
            if config.get("variance") is None:
                raise ModelFileError(f"Normalization layer '{self.name}': the config has a mean "
                                     "but no variance; the file was not written by Keras")
            # Keras makes a tensor of the Python numbers first, which TensorFlow builds in
            # float32: its statistics are the config's values rounded to float32, in a
            # float64 model too (0.7 -> 0.699999988...).
            mean = np.asarray(config["mean"], dtype=np.float32).astype(np.float64)
            var = np.asarray(config["variance"], dtype=np.float32).astype(np.float64)
            if mean.shape != var.shape or mean.ndim > len(self.axis):
                raise ModelFileError(f"Normalization layer '{self.name}': mean of shape "
                                     f"{mean.shape} and variance of shape {var.shape} do not fit "
                                     f"axis={self.axis}")
        else:
            mean, var, _count = weights
        self.mean = mean
        self.std = np.maximum(np.sqrt(var), KERAS_EPSILON)

    def trainable_flags(self):
        return [False] * len(self.weights)

    def _broadcast(self, a, x):
        """``a`` (mean or std) reshaped to broadcast against ``x`` as Keras does: its
        trailing axes go to the kept axes, counted from the last one."""
        keep = sorted(d % x.ndim for d in self.axis)
        if any(d < -x.ndim or d >= x.ndim for d in self.axis):
            raise InputError(f"Normalization layer '{self.name}': axis={self.axis} does not fit "
                             f"input of shape {x.shape}")
        shape = [1] * x.ndim
        for i in range(1, a.ndim + 1):
            shape[keep[-i]] = a.shape[-i]
        if a.ndim and any(shape[d] not in (1, x.shape[d]) for d in keep):
            raise InputError(f"Normalization layer '{self.name}': mean/variance of shape "
                             f"{a.shape} do not fit input of shape {x.shape} (axis={self.axis})")
        return a.reshape(shape)

    def forward(self, x, mask=None):
        mean, std = self._broadcast(self.mean, x), self._broadcast(self.std, x)
        if self.invert:
            return mean + x * std
        return (x - mean) / std

    def forward_train(self, x, mask, ctx):
        self._std = self._broadcast(self.std, x)
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        grads = [None] * len(self.weights)
        if not need_dx:
            return None, grads
        return (dy * self._std if self.invert else dy / self._std), grads


# ----------------------------------------------------------------------------- categorical
# CategoryEncoding, Discretization, Hashing and the lookup layers share Keras'
# ``encode_categorical_inputs`` (keras/src/utils/numerical_utils.py, TF backend): one copy.

CATEGORICAL_MODES = ("one_hot", "multi_hot", "count")


def positive_int(value, where, option):
    """A config value that must be an integer >= 1 (sizes, bin and token counts)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelFileError(f"{where}: {option}={str(value)[:60]} is not a positive integer; the "
                             "file was not written by Keras or is corrupt")
    return value


def categorical_mode(layer, extra=()):
    """``output_mode`` with Keras' deprecated alias ('binary' = 'multi_hot')."""
    mode = layer.config.get("output_mode", extra[0] if extra else "multi_hot")
    if mode == "binary":
        mode = "multi_hot"
    if mode not in tuple(extra) + CATEGORICAL_MODES:
        raise layer.unsupported("output_mode", mode, f"supported: {list(extra) + list(CATEGORICAL_MODES)}")
    return mode


def integer_ids(x, layer):
    """Integer input as int64: integer arrays as they are, float arrays only when every
    value is integral (Keras would truncate 1.7 to 1; we refuse), anything else refused."""
    x = np.asarray(x)
    if x.dtype.kind in "iub":
        return x.astype(np.int64, copy=False)
    if x.dtype.kind == "f":
        if not np.isfinite(x).all() or (x != np.trunc(x)).any():
            raise InputError(f"{layer.class_name} layer '{layer.name}': expected integer ids, got "
                             "non-integral or non-finite floats")
        return x.astype(np.int64)
    raise InputError(f"{layer.class_name} layer '{layer.name}': expected integer ids, got dtype {x.dtype}")


def encode_categorical(ids, mode, depth, dtype, layer):
    """Keras' ``encode_categorical_inputs`` on int64 ``ids`` (TF backend):

    * one_hot: a trailing axis of size 1 is dropped, then ``(..., depth)`` with a 1 at each
      id (``tf.one_hot``: an id outside [0, depth) gives a row of zeros);
    * multi_hot / count (``tf.math.bincount`` along the last axis of (N, k) ids): whether /
      how often each id occurs in the row; ids >= depth are dropped and negative ids refused,
      as TF's DenseBincount does. (Keras counts a rank-1 input over the whole batch; that
      depends on the batch, so it is refused: give the input a feature axis.)"""
    where = f"{layer.class_name} layer '{layer.name}'"
    if mode == "one_hot":
        if ids.ndim > 1 and ids.shape[-1] == 1:
            ids = ids[..., 0]
        check_sample_elements(layer, ids.shape[1:] + (depth,))
        out = np.zeros(ids.shape + (depth,), dtype=dtype)
        flat = ids.ravel()
        hit = (flat >= 0) & (flat < depth)
        out.reshape(-1, depth)[np.nonzero(hit)[0], flat[hit]] = 1
        return out
    if ids.ndim != 2:
        raise InputError(f"{where}: output_mode='{mode}' needs input of shape (batch, k), got "
                         f"{ids.shape}" + (" (Keras would count over the whole batch; reshape the "
                                           "input to (batch, 1))" if ids.ndim == 1 else ""))
    if (ids < 0).any():
        raise InputError(f"{where}: output_mode='{mode}' got a negative id ({int(ids.min())}); "
                         "TensorFlow's bincount refuses those too")
    check_sample_elements(layer, (depth,))
    n = ids.shape[0]
    keep = ids < depth
    rows = np.broadcast_to(np.arange(n)[:, None], ids.shape)[keep]
    counts = np.bincount(rows * depth + ids[keep], minlength=n * depth).reshape(n, depth)
    if mode == "multi_hot":
        counts = np.minimum(counts, 1)
    return counts.astype(dtype)


def as_string_array(x, layer):
    """String input of any shape as an object array of ``str``; ``bytes`` are read as
    TensorFlow reads them (UTF-8, an undecodable byte kept as a lone surrogate, so it
    matches no token and hashes as the original bytes)."""
    arr = x if isinstance(x, np.ndarray) else np.asarray(x, dtype=object)
    if arr.dtype.kind not in "OUS":
        raise InputError(f"{layer.class_name} layer '{layer.name}': expected strings (str or bytes), "
                         f"got an array of dtype {arr.dtype}")

    def one(v):
        if isinstance(v, bytes):
            return decode_input(v)
        if isinstance(v, str):
            return v
        raise InputError(f"{layer.class_name} layer '{layer.name}': expected strings (str or bytes), "
                         f"got {type(v).__name__} {v!r}")
    flat = arr.astype(object).ravel().tolist()
    out = np.empty(len(flat), dtype=object)
    out[:] = [one(v) for v in flat]
    return out.reshape(arr.shape)


class CategoryEncoding(Layer):
    """``keras.layers.CategoryEncoding(num_tokens, output_mode)``: integer ids encoded by
    :func:`encode_categorical` (one_hot, multi_hot, count) in the compute dtype. No
    gradient (its input is ids); ``count_weights`` (a second tensor) is refused."""

    input_kind = "int"
    float_dtype = np.float64  # the output's dtype (Model.astype sets it)

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        where = f"CategoryEncoding layer '{self.name}'"
        self.num_tokens = positive_int(config.get("num_tokens"), where, "num_tokens")
        self.output_mode = categorical_mode(self)
        self.require("sparse", (False,), False)
        check_sample_elements(self, (self.num_tokens,))

    def forward(self, x, mask=None):
        return encode_categorical(integer_ids(x, self), self.output_mode, self.num_tokens,
                                  self.float_dtype, self)


class Discretization(Layer):
    """``keras.layers.Discretization(bin_boundaries, output_mode)``: the bin of each value,
    the number of boundaries <= x (TF's ``Bucketize``, whose boundaries are a list(float)
    attribute: float32-rounded, in a float64 model too; NaN falls in the last bin).
    output_mode int gives int32 bins; one_hot / multi_hot / count encode them (depth =
    boundaries + 1). The boundaries come from the config (``adapt()`` writes them there).
    No gradient."""

    float_dtype = np.float64

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.output_mode = categorical_mode(self, ("int",))
        self.require("sparse", (False,), False)
        bounds = config.get("bin_boundaries")
        if bounds is None:
            raise ModelFileError(f"Discretization layer '{self.name}': no bin_boundaries in the "
                                 "config (the layer was never adapted; Keras cannot run it either)")
        try:
            b = np.asarray([float(v) for v in bounds], dtype=np.float32)
        except (TypeError, ValueError):
            raise ModelFileError(f"Discretization layer '{self.name}': bin_boundaries are not "
                                 "numbers; the file was not written by Keras or is corrupt") from None
        if b.ndim != 1 or (np.diff(b) < 0).any() or np.isnan(b).any():
            raise ModelFileError(f"Discretization layer '{self.name}': bin_boundaries are not a "
                                 "sorted list of numbers (TF's Bucketize refuses them)")
        self.boundaries = b.astype(np.float64)
        if self.output_mode != "int":
            check_sample_elements(self, (len(b) + 1,))

    def forward(self, x, mask=None):
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise InputError(f"Discretization layer '{self.name}': expected numbers, got dtype {x.dtype}")
        bins = np.searchsorted(self.boundaries, x, side="right")
        if self.output_mode == "int":
            return bins.astype(np.int32)
        return encode_categorical(bins.astype(np.int64), self.output_mode, len(self.boundaries) + 1,
                                  self.float_dtype, self)
