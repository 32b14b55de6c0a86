"""3-D convolutions (channels_last): Conv3D and Conv3DTranspose, forward and backward.

The machinery of Conv2D (:mod:`scratch_layers.layers.conv`) with one more spatial axis:

* **im2col**: the patches of the padded volume are ONE strided view
  (N, Do, Ho, Wo, kd, kh, kw, C), copied once into a contiguous buffer and multiplied by the
  kernel reshaped to (kd*kh*kw*C, F) in one GEMM. Nothing loops over depth slices, pixels
  or samples. With ``groups`` G > 1 the same view is split by channel group and copied
  group-major, (G, N, Do, Ho, Wo, kd, kh, kw, C/G), and the GEMM is one batched GEMM of the
  G groups' (rows, kd*kh*kw*C/G) @ (kd*kh*kw*C/G, F/G), written straight into the output's
  channel slots; G = 1 is the same code with one group.
* **col2im** (the adjoint of im2col: the input gradient of Conv3D, and Conv3DTranspose's
  forward): one matmul per kernel offset, added to that offset's strided slab of the
  padded volume (:func:`add_offsets`), kd*kh*kw iterations in all.

Geometry is TensorFlow's, axis by axis (:func:`~scratch_layers.layers.layer.same_padding`:
'same' puts the extra pad after), and the transposed convolution's output length is
Keras' (:func:`~scratch_layers.layers.conv_transpose.conv_transpose_length`).
"""
import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import activations, workspace
from ..blas import block_sum, for_blocks, rows_matmul, rows_matmul_tn
from ..errors import InputError, ModelFileError
from ..profiling import gemm
from .bounds import check_sample_elements
from .conv import AbsorbsAffine, read_conv_options
from .conv_transpose import check_transpose_sizes, conv_transpose_length, conv_transpose_pads
from .layer import KeepsPreactivation, Layer, as_tuple, positive_sizes, same_padding, valid_out

SPATIAL = 3


# ----------------------------------------------------------------------------- geometry

def conv3d_geometry(x_shape, k_size, strides, padding, dilation):
    """``(out, pads)`` of a 3-D convolution of an (N, D, H, W, C) input: out = (Do, Ho, Wo),
    pads = ((front, back), (top, bottom), (left, right)); TF 'same' or 'valid' per axis."""
    outs, pads = [], []
    for size, k, s, d in zip(x_shape[1:1 + SPATIAL], k_size, strides, dilation):
        if padding == "same":
            out, before, after = same_padding(size, k, s, d)
        else:
            out, before, after = valid_out(size, k, s, d), 0, 0
        outs.append(out)
        pads.append((before, after))
    if min(outs) <= 0:
        raise InputError(f"input spatial size {tuple(x_shape[1:1 + SPATIAL])} is too small for "
                         f"kernel {tuple(k_size)} with dilation {tuple(dilation)} and padding "
                         f"'{padding}'")
    return tuple(outs), tuple(pads)


def _padded_sizes(sizes, pads):
    return tuple(s + a + b for s, (a, b) in zip(sizes, pads))


def pad3d(x, pads, value=0.0):
    """Pad the three spatial axes of an (N, D, H, W, C) array (``pads``: three (before,
    after) pairs); returns x itself when nothing is padded."""
    if not any(a or b for a, b in pads):
        return x
    n, c = x.shape[0], x.shape[-1]
    sizes = x.shape[1:1 + SPATIAL]
    out = np.full((n,) + _padded_sizes(sizes, pads) + (c,), value, dtype=x.dtype)
    out[(slice(None),) + tuple(slice(a, a + s) for s, (a, _) in zip(sizes, pads))] = x
    return out


def patches3d(x, k_size, strides, dilation, pads, outs, groups=1):
    """The patches of the padded ``x`` as ONE strided view, no copy, grouped by channel
    group: (G, N, Do, Ho, Wo, kd, kh, kw, C/G) with
    ``view[g, n, i, j, l, a, b, c, ch] = xpad[n, i*sd + a*dd, j*sh + b*dh, l*sw + c*dw, g*C/G + ch]``."""
    n, c = x.shape[0], x.shape[-1]
    xp = pad3d(x, pads)
    s_n, s_c = xp.strides[0], xp.strides[-1]
    s_sp = xp.strides[1:1 + SPATIAL]
    return as_strided(xp, (groups, n) + tuple(outs) + tuple(k_size) + (c // groups,),
                      (c // groups * s_c, s_n) + tuple(a * s for a, s in zip(s_sp, strides))
                      + tuple(a * d for a, d in zip(s_sp, dilation)) + (s_c,),
                      writeable=False)


def im2col3d(x, k_size, strides, dilation, pads, outs, out=None, groups=1):
    """The patches of :func:`patches3d` copied once (into ``out`` when given) into a
    contiguous buffer: (N, Do, Ho, Wo, kd, kh, kw, C) for ``groups`` = 1, else
    (G, N, Do, Ho, Wo, kd, kh, kw, C/G), each group's rows one contiguous matrix."""
    view = patches3d(x, k_size, strides, dilation, pads, outs, groups)
    if groups == 1:
        view = view[0]
    if out is None:
        return np.ascontiguousarray(view)
    np.copyto(out, view)
    return out


def group_kernel(kernel, groups):
    """The kernel (kd, kh, kw, C/G, F) as G matrices (G, kd*kh*kw*C/G, F/G): group g's
    filters g*F/G .. (g+1)*F/G read its C/G input channels g*C/G .. (g+1)*C/G (Keras' and
    TF's grouping: both split contiguously). No copy for one group."""
    f = kernel.shape[-1]
    return np.ascontiguousarray(kernel.reshape(-1, groups, f // groups).transpose(1, 0, 2))


def group_rows(a, groups):
    """(R, G*M) -> the (G, R, M) view of its column groups."""
    r, gm = a.shape
    return a.reshape(r, groups, gm // groups).transpose(1, 0, 2)


def grouped_matmul(a, b, matmul=np.matmul):
    """(G, R, K) @ (G, K, M) -> (R, G*M), column g*M + j from group g: ONE batched GEMM
    written straight into the output's column groups (for G = 1, one plain GEMM)."""
    g, r, _ = a.shape
    y = np.empty((r, g, b.shape[-1]), np.result_type(a, b))
    matmul(a, b, out=y.transpose(1, 0, 2))
    return y.reshape(r, -1)


def grouped_rows_matmul(a, b, bias=None):
    """:func:`grouped_matmul` (+ ``bias``) with the rows split over the worker threads."""
    g, r, _ = a.shape
    y = np.empty((r, g, b.shape[-1]), np.result_type(a, b))

    def block(s):
        np.matmul(a[:, s], b, out=y[s].transpose(1, 0, 2))
        if bias is not None:
            y[s] += bias.reshape(g, -1)
    for_blocks(block, r, a.size)
    return y.reshape(r, -1)


def grouped_rows_matmul_tn(a, b):
    """a^T b per group, (G, R, K), (G, R, M) -> (G, K, M), summed over row blocks that run
    on the worker threads."""
    return block_sum(lambda s: np.matmul(a[:, s].transpose(0, 2, 1), b[:, s]), a.shape[1], a.size)


def add_offsets(shape, pads, strides, dilation, k_size, grid, contribution, n, channels, dtype):
    """The adjoint of :func:`im2col3d`: ``out`` (N, *shape, F) with
    ``out[n, i*s + a*d - p] += contribution(a)[n, i]`` for every kernel offset
    a = (a0, a1, a2) and every cell i of the patch ``grid`` (the convolution's output sizes),
    cells that land in the pads dropped. One strided slab add per kernel offset (within one
    offset the slab's cells are distinct, so ``+=`` is exact); never a loop over cells."""
    extent = tuple(max(o + p0 + p1, (k - 1) * d + (g - 1) * s + 1)
                   for o, (p0, p1), k, d, g, s in zip(shape, pads, k_size, dilation, grid, strides))
    acc = np.zeros((n,) + extent + (channels,), dtype)
    for offset in np.ndindex(*k_size):
        slab = (slice(None),) + tuple(slice(a * d, a * d + (g - 1) * s + 1, s)
                                      for a, d, g, s in zip(offset, dilation, grid, strides))
        acc[slab] += contribution(offset)
    return acc[(slice(None),) + tuple(slice(p0, p0 + o) for o, (p0, _) in zip(shape, pads))]


def col2im3d(dz, kernel, x_shape, strides, dilation, pads, groups=1):
    """dL/dx of a 3-D convolution: :func:`add_offsets` of ``dz @ K[a]^T`` per kernel offset a
    (per group: group g's columns of dz times its block of K[a], one batched GEMM); the
    whole dcols buffer is never held."""
    n, f = dz.shape[0], dz.shape[-1]
    grid = dz.shape[1:1 + SPATIAL]
    dzg = group_rows(dz.reshape(-1, f), groups)
    c = x_shape[-1]
    k_t = kernel.reshape(kernel.shape[:SPATIAL] + (c // groups, groups, f // groups))

    def contribution(a):  # (G, R, F/G) @ (G, F/G, C/G)
        return grouped_matmul(dzg, k_t[a].transpose(1, 2, 0)).reshape((n,) + grid + (c,))
    return add_offsets(x_shape[1:1 + SPATIAL], pads, strides, dilation, kernel.shape[:SPATIAL], grid,
                       contribution, n, c, dz.dtype)


def _is_pointwise(k_size, strides, pads):
    return tuple(k_size) == (1,) * SPATIAL and tuple(strides) == (1,) * SPATIAL and \
        not any(a or b for a, b in pads)


def conv3d(x, kernel, strides=(1, 1, 1), padding="valid", dilation=(1, 1, 1), groups=1):
    """3-D cross-correlation as Keras/TF computes it: x (N, D, H, W, C), kernel
    (kd, kh, kw, C/G, F) -> (N, Do, Ho, Wo, F), with G = ``groups`` and filter f in group
    g = f // (F/G),
    y[n, i, j, l, f] = sum_{a, b, c, ch} xpad[n, i*sd + a*dd, j*sh + b*dh, l*sw + c*dw, g*C/G + ch]
    * kernel[a, b, c, ch, f]: im2col (one strided copy into this thread's reused buffer)
    and one GEMM (batched over the groups)."""
    n, c = x.shape[0], x.shape[-1]
    k_size = kernel.shape[:SPATIAL]
    outs, pads = conv3d_geometry(x.shape, k_size, strides, padding, dilation)
    rows = n * int(np.prod(outs))
    if _is_pointwise(k_size, strides, pads):
        cols = group_rows(x.reshape(-1, c), groups)
    else:
        lead = (groups,) if groups > 1 else ()
        cols = workspace.buffer("conv3d_cols", lead + (n,) + outs + kernel.shape[:-1], x.dtype)
        im2col3d(x, k_size, strides, dilation, pads, outs, out=cols, groups=groups)
        cols = cols.reshape(groups, rows, -1)
    y = grouped_matmul(cols, group_kernel(kernel, groups), gemm)
    return y.reshape((n,) + outs + kernel.shape[-1:])


# ----------------------------------------------------------------------------- transposed

def conv_transpose3d_geometry(x_shape, k_size, strides, padding, output_padding, dilation):
    """``(out, pads)`` of a 3-D transposed convolution: Keras' output lengths, and the pads
    of the forward convolution (out -> input) whose adjoint it is."""
    op = (None,) * SPATIAL if output_padding is None else output_padding
    sizes = x_shape[1:1 + SPATIAL]
    outs = tuple(conv_transpose_length(size, k, s, padding, p, d)
                 for size, k, s, p, d in zip(sizes, k_size, strides, op, dilation))
    if min(outs) <= 0:
        raise InputError(f"transposed convolution of spatial size {tuple(sizes)} gives output {outs}")
    pads = tuple(conv_transpose_pads(size, out, k, s, padding, d)
                 for size, out, k, s, d in zip(sizes, outs, k_size, strides, dilation))
    return outs, pads


def conv_transpose3d(x, kernel, strides, padding, output_padding=None, dilation=(1, 1, 1)):
    """Keras/TF 3-D transposed convolution (the gradient of :func:`conv3d` w.r.t. its input):
    x (N, D, H, W, C), kernel (kd, kh, kw, F, C) -> (N, Do, Ho, Wo, F) with
    y[n, i*s + a*d - p, f] += sum_c x[n, i, c] kernel[a, f, c] (per axis). One matmul
    x @ K^T for all offsets at once, then :func:`add_offsets`."""
    n, c = x.shape[0], x.shape[-1]
    k_size, f = kernel.shape[:SPATIAL], kernel.shape[SPATIAL]
    outs, pads = conv_transpose3d_geometry(x.shape, k_size, strides, padding, output_padding, dilation)
    grid = x.shape[1:1 + SPATIAL]
    taps = int(np.prod(k_size))
    k_t = np.ascontiguousarray(np.moveaxis(kernel, -1, 0).reshape(c, taps * f))
    cols = rows_matmul(x.reshape(-1, c), k_t).reshape((n,) + grid + tuple(k_size) + (f,))
    return add_offsets(outs, pads, strides, dilation, k_size, grid,
                       lambda a: cols[(Ellipsis,) + a + (slice(None),)], n, f, cols.dtype)


# ----------------------------------------------------------------------------- layers

class Conv3DBase(Layer):
    """What Conv3D and Conv3DTranspose share: the kernel (and bias) from the file, Keras'
    spatial options, the activation, and the (N, D, H, W, C) input check."""

    kernel_in_axis = SPATIAL  # the kernel axis of the input channels

    @classmethod
    def _kernel_size(cls, config):
        where = f"{cls.__name__} layer '{config.get('name')}'"
        return positive_sizes(config["kernel_size"], SPATIAL, where, "kernel_size")

    def __init__(self, config, weights, class_name=None):
        self.use_bias = config.get("use_bias", True)
        self.n_weights = 2 if self.use_bias else 1
        super().__init__(config, weights, class_name)
        read_conv_options(self, config, weights, SPATIAL)
        self.in_channels = self.kernel.shape[self.kernel_in_axis]

    def _check_input(self, x):
        self.check_rank(x, SPATIAL + 2, "volume batch (N, D, H, W, C)")
        self.check_last_dim(x, self.in_channels)

    def forward(self, x, mask=None):
        z = self._z(x)
        if self.activation is activations.relu:
            return np.maximum(z, 0.0, out=z)  # in place
        return self.activation(z)

    def _dz(self, dy):
        z, y = self._saved[-2:]
        return activations.backward(self.activation, z, y, dy.reshape(y.shape),
                                    f"{self.class_name} layer '{self.name}'")


class Conv3D(AbsorbsAffine, Conv3DBase):
    """Conv3D: y = activation(conv3d(x, kernel) + bias), channels_last, kernel
    (kd, kh, kw, C/G, F) with G = ``groups`` (filter f reads the input channels of group
    f // (F/G), as :func:`conv3d` says); valid/same padding, strides, dilation.

    Backward (the patches kept from the forward pass, grouped as (G, rows, kd*kh*kw*C/G)):
    dz = act'(z) dy; dK_g = cols_g^T dz_g (one GEMM, batched over the groups);
    db = sum dz; dx = col2im(dz_g K_g^T) (:func:`col2im3d`).

    In predict's plan a linear Conv3D absorbs a following BatchNormalization (on the
    channel axis) or ReLU, as Conv2D does (:class:`~scratch_layers.layers.conv.AbsorbsAffine`)."""

    @classmethod
    def weight_shapes(cls, config):
        """kernel (kd, kh, kw, in/groups, filters) [+ bias (filters,)]."""
        f = int(config["filters"])
        return [cls._kernel_size(config) + ("in", f)] + ([(f,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        groups = config.get("groups", 1)
        groups = 1 if groups is None else groups
        f = self.kernel.shape[-1]
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1 or f % groups:
            raise ModelFileError(f"{self.class_name} layer '{self.name}': groups={groups!r} must be a "
                                 f"positive integer that divides filters={f}")
        self.groups = groups
        self.in_channels = self.kernel.shape[SPATIAL] * groups

    def absorb(self, following):
        """:meth:`AbsorbsAffine.absorb` for a 5-D output: only a BatchNormalization on the
        last (channel) axis of a rank-5 input, or a ReLU."""
        if following.relu_ceiling() is None and following.channel_affine(SPATIAL + 2) is None:
            return None
        return super().absorb(following)

    def _geometry(self, x):
        self._check_input(x)
        outs, pads = conv3d_geometry(x.shape, self.kernel.shape[:SPATIAL], self.strides, self.padding,
                                     self.dilation)
        check_sample_elements(self, _padded_sizes(x.shape[1:1 + SPATIAL], pads) + x.shape[-1:],
                              "zero-padded input")
        check_sample_elements(self, outs + self.kernel.shape[-1:])
        return outs, pads

    def _z(self, x):
        self._geometry(x)
        z = conv3d(x, self.kernel, self.strides, self.padding, self.dilation, self.groups)
        if self.bias is not None:
            z += self.bias
        return z

    def workspace_per_sample(self, output_size):
        """The im2col buffer: kd*kh*kw*C values per output cell."""
        k = self.kernel
        return output_size // k.shape[-1] * int(np.prod(k.shape[:SPATIAL])) * self.in_channels

    def forward_train(self, x, mask, ctx):
        """z = im2col(x) @ K + b with the patches kept (G, rows, kd*kh*kw*C/G); the copy and
        the GEMM run in row blocks on the worker threads."""
        outs, pads = self._geometry(x)
        k, g = self.kernel, self.groups
        n = len(x)
        if _is_pointwise(k.shape[:SPATIAL], self.strides, pads):
            cols = group_rows(x.reshape(-1, self.in_channels), g)
        else:
            lead = (g,) if g > 1 else ()
            cols = np.empty(lead + (n,) + outs + k.shape[:-1], x.dtype)
            samples = (slice(None),) * len(lead)
            for_blocks(lambda s: im2col3d(x[s], k.shape[:SPATIAL], self.strides, self.dilation, pads,
                                          outs, out=cols[samples + (s,)], groups=g), n, cols.size)
            cols = cols.reshape(g, n * int(np.prod(outs)), -1)
        z = grouped_rows_matmul(cols, group_kernel(k, g), self.bias).reshape((n,) + outs + k.shape[-1:])
        y = self.activation(z)
        self._saved = (x.shape, cols, pads, z, y)
        return y

    def backward(self, dy, need_dx=True):
        x_shape, cols, pads, z, y = self._saved
        dz = self._dz(dy)
        k, g = self.kernel, self.groups
        f = k.shape[-1]
        dz2 = dz.reshape(-1, f)
        dzg = group_rows(dz2, g)
        dk = grouped_rows_matmul_tn(cols, dzg)  # (G, kd*kh*kw*C/G, F/G)
        grads = [np.ascontiguousarray(dk.transpose(1, 0, 2)).reshape(k.shape)]
        if self.bias is not None:
            grads.append(block_sum(lambda s: dz2[s].sum(axis=0), len(dz2), dz2.size))
        if not need_dx:
            return None, grads
        if _is_pointwise(k.shape[:SPATIAL], self.strides, pads):
            k_t = k.reshape(-1, g, f // g).transpose(1, 2, 0)  # (G, F/G, C/G)
            return grouped_rows_matmul(dzg, k_t).reshape(x_shape), grads
        dx = np.empty(x_shape, dz.dtype)

        def block(s):
            dx[s] = col2im3d(dz[s], k, dx[s].shape, self.strides, self.dilation, pads, g)
        for_blocks(block, len(dx), dz.size * int(np.prod(k.shape[:SPATIAL])))
        return dx, grads


class Conv3DTranspose(KeepsPreactivation, Conv3DBase):
    """Conv3DTranspose: y = activation(conv_transpose3d(x, kernel) + bias), channels_last,
    kernel (kd, kh, kw, F, C); valid/same padding, strides, output_padding, dilation.

    Backward: the input gradient of a transposed convolution is the ordinary strided
    convolution of dz with the same kernel: cols = im2col(dz) (N, D, H, W, kd, kh, kw, F),
    dx = cols @ K.reshape(kd*kh*kw*F, C), dK = cols^T x, db = sum dz."""

    kernel_in_axis = SPATIAL + 1

    @classmethod
    def weight_shapes(cls, config):
        """kernel (kd, kh, kw, filters, in) [+ bias (filters,)]."""
        f = int(config["filters"])
        return [cls._kernel_size(config) + (f, "in")] + ([(f,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        super().__init__(config, weights, class_name)
        where = f"{self.class_name} layer '{self.name}'"
        op = config.get("output_padding")
        if op is None:
            self.output_padding = None
        else:
            op = positive_sizes([v + 1 for v in as_tuple(op, SPATIAL)], SPATIAL, where, "output_padding+1")
            self.output_padding = tuple(v - 1 for v in op)
            if any(p >= s for p, s in zip(self.output_padding, self.strides)):
                raise ModelFileError(f"{where}: output_padding={config.get('output_padding')!r} "
                                     f"must be smaller than strides={config.get('strides')!r}")
        # the output of a 1x1x1 input already: a lower bound on any input's, from the config alone
        self._output_cells((1,) * SPATIAL)

    def _output_cells(self, sizes):
        check_transpose_sizes(self, sizes, self.kernel.shape[:SPATIAL], self.strides, self.padding,
                              self.output_padding, self.dilation, self.kernel.shape[SPATIAL])

    def _z(self, x):
        self._check_input(x)
        self._output_cells(x.shape[1:1 + SPATIAL])
        z = conv_transpose3d(x, self.kernel, self.strides, self.padding, self.output_padding,
                             self.dilation)
        if self.bias is not None:
            z += self.bias
        return z

    def backward(self, dy, need_dx=True):
        x, _, _ = self._saved
        dz = self._dz(dy)
        k = self.kernel
        c = x.shape[-1]
        grid = x.shape[1:1 + SPATIAL]
        _, pads = conv_transpose3d_geometry(x.shape, k.shape[:SPATIAL], self.strides, self.padding,
                                            self.output_padding, self.dilation)
        cols = im2col3d(dz, k.shape[:SPATIAL], self.strides, self.dilation, pads, grid)
        cols = cols.reshape(x.size // c, -1)
        grads = [rows_matmul_tn(cols, x.reshape(-1, c)).reshape(k.shape)]
        if self.bias is not None:
            grads.append(dz.reshape(-1, dz.shape[-1]).sum(axis=0))
        if not need_dx:
            return None, grads
        return rows_matmul(cols, k.reshape(-1, c)).reshape(x.shape), grads
