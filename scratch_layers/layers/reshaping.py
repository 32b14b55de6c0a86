"""Reshaping layers: flatten, reshape, permute, repeat, pad, crop and upsample."""
import numpy as np

from ..errors import InputError, ModelFileError
from .bounds import check_sample_elements
from .conv import pad2d
from .conv3d import pad3d
from .layer import Layer
from .resizing import axis_operator


class Flatten(Layer):
    """Row-major flatten of all non-batch axes (channels_last order, as Keras)."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        if config.get("data_format", "channels_last") not in ("channels_last", None):
            raise self.unsupported("data_format", config.get("data_format"))

    def forward(self, x, mask=None):
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # explicit size: works for N=0

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape), []


class Reshape(Layer):
    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.target = tuple(config["target_shape"])

    def forward(self, x, mask=None):
        try:
            target = list(self.target)
            if -1 in target:  # resolve -1 explicitly so that an empty batch works too
                known = int(np.prod([t for t in target if t != -1]))
                target[target.index(-1)] = int(np.prod(x.shape[1:])) // max(known, 1)
            return x.reshape((x.shape[0],) + tuple(target))
        except ValueError:
            raise InputError(f"Reshape layer '{self.name}': cannot reshape input of shape "
                             f"{x.shape} to (batch,) + {self.target}") from None

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._shape), []


class Permute(Layer):
    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.dims = tuple(config["dims"])

    def forward(self, x, mask=None):
        return np.transpose(x, (0,) + self.dims)

    def forward_train(self, x, mask, ctx):
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return np.transpose(dy, np.argsort((0,) + self.dims)), []


class ZeroPadding2D(Layer):
    """ZeroPadding2D on (N, H, W, C): ``padding`` zeros around H and W (int, two ints, or two
    (before, after) pairs). Backward: the middle of dy. The padded size is checked against
    :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS` before allocating (from the
    config alone when built, on the real shape per call)."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.pads = _pairs(config.get("padding", 1), 2, f"{self.class_name} layer '{self.name}'",
                           "padding")
        check_sample_elements(self, [a + b + 1 for a, b in self.pads])  # a 1x1 input's: a lower bound

    def absorb(self, following):
        """A convolution that pads its own input instead (ResNet50's and MobileNetV2's
        explicit pads before a 'valid' strided convolution): no padded copy."""
        return following.absorb_zero_padding(self.pads)

    def forward(self, x, mask=None):
        self.check_rank(x, 4, "image batch (N, H, W, C)")
        check_sample_elements(self, _padded(x.shape, self.pads))
        return pad2d(x, self.pads)

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        (t, _), (l, _) = self.pads
        return dy[:, t:t + self._shape[1], l:l + self._shape[2]], []


# ----------------------------------------------------------------------------- cropping / padding

def _pairs(value, n, where, option):
    """Keras' cropping/padding argument as n (before, after) pairs of non-negative ints:
    int -> same on every side; (a, b) with n = 1 -> ((a, b),); (a, b) with n = 2 ->
    ((a, a), (b, b)); ((a, b), (c, d)) as given."""
    try:
        if isinstance(value, (int, float)):
            pairs = [(int(value), int(value))] * n
        elif n == 1:
            pairs = [tuple(int(v) for v in value)]
        elif all(isinstance(v, (int, float)) for v in value):
            pairs = [(int(v), int(v)) for v in value]
        else:
            pairs = [tuple(int(v) for v in p) for p in value]
    except (TypeError, ValueError):
        pairs = None
    if pairs is None or len(pairs) != n or any(len(p) != 2 or min(p) < 0 for p in pairs):
        raise ModelFileError(f"{where}: {option}={value!r} must be {n} pair(s) of non-negative "
                             "integers; the file was not written by Keras or is corrupt")
    return tuple(pairs)


def _padded(shape, pads):
    """The sample shape of an (N, *spatial, C) array of ``shape`` zero-padded by ``pads``
    (one (before, after) pair per spatial axis)."""
    return [s + a + b for s, (a, b) in zip(shape[1:-1], pads)] + [shape[-1]]


class Cropping2D(Layer):
    """Cropping2D: y = x[:, t:H-b, l:W-r]. Backward: dy placed back, zeros in the crop."""

    spatial = 2

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.crops = _pairs(config.get("cropping", 1 if self.spatial == 1 else ((0, 0), (0, 0))),
                            self.spatial, f"{self.class_name} layer '{self.name}'", "cropping")

    def _window(self, x):
        self.check_rank(x, self.spatial + 2)
        index = [slice(None)]
        for (before, after), size in zip(self.crops, x.shape[1:1 + self.spatial]):
            if before + after >= size:
                raise InputError(f"{self.class_name} layer '{self.name}': cropping {self.crops} "
                                 f"leaves nothing of input shape {x.shape}")
            index.append(slice(before, size - after))
        return tuple(index)

    def forward(self, x, mask=None):
        return x[self._window(x)]

    def forward_train(self, x, mask, ctx):
        self._saved = (x.shape, self._window(x))
        return x[self._saved[1]]

    def backward(self, dy, need_dx=True):
        shape, window = self._saved
        dx = np.zeros(shape, dy.dtype)
        dx[window] = dy
        return dx, []


class Cropping1D(Cropping2D):
    """Cropping1D on (N, L, C): y = x[:, a:L-b] (``cropping`` (a, b), default (1, 1))."""

    spatial = 1


class ZeroPadding1D(Layer):
    """ZeroPadding1D on (N, L, C): ``padding`` zeros before and after the time axis.
    Backward: the middle of dy."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.pads = _pairs(config.get("padding", 1), 1, f"{self.class_name} layer '{self.name}'",
                           "padding")[0]
        check_sample_elements(self, [sum(self.pads) + 1])  # a length-1 input's: a lower bound

    def forward(self, x, mask=None):
        self.check_rank(x, 3, "sequence batch (N, L, C)")
        check_sample_elements(self, _padded(x.shape, (self.pads,)))
        return pad2d(x[:, None], ((0, 0), self.pads))[:, 0]

    def forward_train(self, x, mask, ctx):
        self._length = x.shape[1]
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy[:, self.pads[0]:self.pads[0] + self._length], []


# ----------------------------------------------------------------------------- upsampling

def bilinear_weights(size, factor):
    """TF's ResizeBilinear with half-pixel centers along one axis, as a (size*factor, size)
    matrix A (out = A @ in): for output cell o, t = (o + 0.5) / factor - 0.5 computed in
    float32 like TF's kernel (scale = size / out as float32), lo = max(floor(t), 0),
    hi = min(ceil(t), size - 1), w = t - floor(t); A[o, lo] += 1 - w, A[o, hi] += w.
    The one copy of these weights is Resizing's (:func:`resizing.axis_operator`)."""
    return axis_operator("bilinear", size, size * factor).dense()


class UpSampling2D(Layer):
    """UpSampling2D, ``size`` (fh, fw). nearest: y[:, i, j] = x[:, i // fh, j // fw] (repeat);
    bilinear: Keras' ops.image.resize (TF ResizeBilinear, half-pixel centers, no antialias),
    y = A_h x A_w^T per sample and channel with :func:`bilinear_weights`.
    Backward: nearest sums each fh x fw block of dy; bilinear dx = A_h^T dy A_w.
    The output size (and the bilinear matrices') is checked against
    :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS` before allocating (from the
    config alone when built, on the real shape per call)."""

    spatial = 2

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.size = self.sizes("size", self.spatial, 2)
        check_sample_elements(self, self.size)  # the output of one cell: a lower bound
        if self.spatial == 2:
            self.interpolation = self.require("interpolation", ("nearest", "bilinear"), "nearest")
        else:
            self.interpolation = "nearest"
        self._matrices = {}

    def _axis_matrix(self, size, factor, dtype):
        key = (size, factor, np.dtype(dtype).str)
        if key not in self._matrices:
            self._matrices[key] = bilinear_weights(size, factor).astype(dtype)
        return self._matrices[key]

    def forward(self, x, mask=None):
        self.check_rank(x, self.spatial + 2)
        check_sample_elements(self, [s * f for s, f in zip(x.shape[1:-1], self.size)] + [x.shape[-1]])
        if self.interpolation == "nearest":
            for axis, factor in enumerate(self.size, start=1):
                x = np.repeat(x, factor, axis=axis)
            return x
        _, h, w, _ = x.shape
        for size, factor in ((h, self.size[0]), (w, self.size[1])):
            check_sample_elements(self, (size * factor, size), "bilinear weights")
        a_h = self._axis_matrix(h, self.size[0], x.dtype)
        a_w = self._axis_matrix(w, self.size[1], x.dtype)
        rows = np.einsum("oh,nhwc->nowc", a_h, x, optimize=True)
        return np.einsum("pw,nowc->nopc", a_w, rows, optimize=True)

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        n, c = self._shape[0], self._shape[-1]
        spatial = self._shape[1:-1]
        if self.interpolation == "nearest":
            split = [n]
            for size, factor in zip(spatial, self.size):
                split += [size, factor]
            dx = dy.reshape(split + [c]).sum(axis=tuple(range(2, 2 * len(spatial) + 1, 2)))
            return dx, []
        h, w = spatial
        a_h = self._axis_matrix(h, self.size[0], dy.dtype)
        a_w = self._axis_matrix(w, self.size[1], dy.dtype)
        rows = np.einsum("pw,nopc->nowc", a_w, dy, optimize=True)
        return np.einsum("oh,nowc->nhwc", a_h, rows, optimize=True), []


class UpSampling1D(UpSampling2D):
    """UpSampling1D on (N, L, C): each step repeated ``size`` times."""

    spatial = 1


class RepeatVector(Layer):
    """(N, F) -> (N, n, F), the input repeated n times; backward sums dy over the n copies."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.n = int(config["n"])
        if self.n < 0:
            raise ModelFileError(f"RepeatVector layer '{self.name}': n={self.n} is negative")
        check_sample_elements(self, (self.n,))  # a 1-feature input's output: a lower bound

    def forward(self, x, mask=None):
        self.check_rank(x, 2)
        check_sample_elements(self, (self.n, x.shape[1]))
        return np.repeat(x[:, None, :], self.n, axis=1)

    def forward_train(self, x, mask, ctx):
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy.sum(axis=1), []


# ----------------------------------------------------------------------------- 3-D

class Cropping3D(Cropping2D):
    """Cropping3D on (N, D, H, W, C): y = x[:, a:D-b, c:H-d, e:W-f] (Keras' default: one
    cell on every side). Backward: dy placed back, zeros in the crop."""

    spatial = 3

    def __init__(self, config, weights, class_name=None):
        super().__init__({"cropping": 1, **config}, weights, class_name)
        self.config = config  # the file's config (set_weights rebuilds the layer from it)


class ZeroPadding3D(Layer):
    """ZeroPadding3D on (N, D, H, W, C): ``padding`` zeros before and after each spatial axis
    (int, three ints, or three (before, after) pairs). Backward: the middle of dy.
    The padded size is checked against :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS`
    before allocating (from the config alone when built, on the real shape per call)."""

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.pads = _pairs(config.get("padding", 1), 3, f"{self.class_name} layer '{self.name}'",
                           "padding")
        check_sample_elements(self, [a + b + 1 for a, b in self.pads])

    def forward(self, x, mask=None):
        self.check_rank(x, 5, "volume batch (N, D, H, W, C)")
        check_sample_elements(self, _padded(x.shape, self.pads))
        return pad3d(x, self.pads)

    def forward_train(self, x, mask, ctx):
        self._shape = x.shape
        return self.forward(x, mask)

    def backward(self, dy, need_dx=True):
        return dy[(slice(None),) + tuple(slice(a, a + s) for (a, _), s in
                                         zip(self.pads, self._shape[1:4]))], []


class UpSampling3D(UpSampling2D):
    """UpSampling3D, ``size`` (fd, fh, fw), nearest (Keras' only mode): each cell repeated
    fd x fh x fw times. Backward sums each block of dy. The output size is checked against
    :data:`~scratch_layers.layers.bounds.MAX_SAMPLE_ELEMENTS` before allocating (as in
    UpSampling2D)."""

    spatial = 3
