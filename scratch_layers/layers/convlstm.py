"""ConvLSTM1D/2D: an LSTM whose matmuls are convolutions (``keras/src/layers/rnn/conv_lstm.py``).

Keras' ConvLSTMCell, gates i, f, c, o (the LSTM's)::

    x_g = conv(x_t, W_g, strides, padding, dilation) + b_g     (the input convolution)
    h_g = conv(h_{t-1}, U_g, strides 1, 'same')               (the recurrent convolution)
    i = ract(x_i + h_i);  f = ract(x_f + h_f);  o = ract(x_o + h_o)
    c_t = f * c_{t-1} + i * act(x_c + h_c);  h_t = o * act(c_t)

Here it is the LSTM layer with two things changed, so the gate maths, the masks, the one
loop over time (:func:`~scratch_layers.layers.recurrent.masked_scan`, with
:func:`~scratch_layers.layers.recurrent.lstm_step` as the step) and backpropagation
through time are the LSTM's:

* the input projection is ONE convolution over all T*N frames (im2col and one GEMM, as
  :func:`~scratch_layers.layers.conv.conv2d`), before the loop, as the LSTM's one matmul;
* the recurrent projection ``h_{t-1} U`` is the 'same' convolution of the state maps
  (:meth:`ConvLSTM2D.recurrent_project`), and its gradient col2im
  (:meth:`ConvLSTM2D.recurrent_input_grad`).

ConvLSTM1D runs as ConvLSTM2D on maps of height 1 (kernel ``(1, k, C, 4F)``), as Conv1D
does; ConvLSTM3D on the 3-D im2col/col2im of :mod:`~scratch_layers.layers.conv3d`.
"""
import numpy as np

from ..errors import ModelFileError, UnsupportedLayerError
from .bounds import check_sample_elements
from .conv import check_reach, col2im, conv2d, conv_geometry, im2col
from .conv3d import _padded_sizes, col2im3d, conv3d, conv3d_geometry, im2col3d
from .layer import positive_sizes
from .recurrent import LSTM


class ConvLSTM2D(LSTM):
    """``keras.layers.ConvLSTM2D`` (channels_last): x (N, T, H, W, C) -> (N, T, Ho, Wo, F)
    with ``return_sequences``, else (N, Ho, Wo, F); with ``return_state`` also h and c
    (N, Ho, Wo, F). Options: padding valid/same, strides, dilation_rate, activation,
    recurrent_activation, use_bias, go_backwards, zero_output_for_mask.

    Masks as Keras applies them: a per-timestep (N, T) mask, or a per-pixel one
    (N, T, H, W) (from a ``Masking`` or an ``Embedding(mask_zero=True)`` before it), which
    masks each pixel of the state maps (an element mask of
    :func:`~scratch_layers.layers.recurrent.masked_scan`). Keras tiles that mask onto the
    output maps, so their size must be the input's ('same' padding, strides 1; Keras
    fails otherwise); the mask may also stop short of the last axes (N, T, H)."""

    spatial = 2   # the layer's
    rank = 2      # the convolutions' (a 1-D layer runs 2-D ones)

    @classmethod
    def weight_shapes(cls, config):
        """kernel (*kernel_size, in, 4F), recurrent_kernel (*kernel_size, F, 4F) [+ bias (4F,)]."""
        where = f"{cls.__name__} layer '{config.get('name')}'"
        k = positive_sizes(config["kernel_size"], cls.spatial, where, "kernel_size")
        f = int(config["filters"])
        return [k + ("in", 4 * f), k + (f, 4 * f)] + ([(4 * f,)] if config.get("use_bias", True) else [])

    def __init__(self, config, weights, class_name=None):
        super().__init__(dict(config, units=int(config["filters"])), weights, class_name)
        self.config = config  # the file's (set_weights rebuilds the layer from it)
        if self.padding == "same":  # the input frames' zero padding, from the config alone
            check_reach(self, self.kernel.shape[:self.rank], self.dilation, self.kernel.shape[-2])

    def _read_options(self, config):
        super()._read_options(config)
        self.require("data_format", ("channels_last", None), "channels_last")
        self.padding = self.require("padding", ("valid", "same"), "valid")
        n = self.spatial
        self.strides = (1,) * (self.rank - n) + self.sizes("strides", n, 1)
        self.dilation = (1,) * (self.rank - n) + self.sizes("dilation_rate", n, 1)
        if max(self.strides) > 1 and max(self.dilation) > 1:
            raise self.unsupported("strides+dilation_rate", (self.strides, self.dilation),
                                   "Keras itself rejects strides > 1 with dilation > 1")

    def _read_weights(self, weights):
        """Kernels as the convolutions take them ((kh, kw, in, 4F) in 2-D: a 1-D one gets kh = 1)."""
        self.kernel = self.as_2d(weights[0])
        self.recurrent_kernel = np.ascontiguousarray(self.as_2d(weights[1]))
        self.input_bias = weights[2] if self.use_bias else None
        self.recurrent_bias = None
        f = self.units
        if self.kernel.shape[-1] != 4 * f or self.recurrent_kernel.shape[-2:] != (f, 4 * f):
            raise ModelFileError(f"{self.class_name} '{self.name}': weight shapes {weights[0].shape}, "
                                 f"{weights[1].shape} do not match filters={f}")

    def as_2d(self, a):
        """A kernel as the convolutions take it (1-D: kh = 1)."""
        return a if self.spatial == self.rank else a[None]

    # the convolution machinery of this rank: conv.py's 2-D, conv3d.py's 3-D ----------
    def _conv(self, x, kernel, strides, padding, dilation):
        if self.rank == 3:
            return conv3d(x, kernel, strides, padding, dilation)
        return conv2d(x, kernel, strides, padding, dilation)

    def _geometry(self, x_shape, k_shape, strides, padding, dilation):
        """``(output spatial sizes, pads)``."""
        if self.rank == 3:
            return conv3d_geometry(x_shape, k_shape[:3], strides, padding, dilation)
        ho, wo, pads = conv_geometry(x_shape, k_shape, strides, padding, dilation)
        return (ho, wo), pads

    def _im2col(self, x, k_shape, strides, dilation, pads, outs):
        if self.rank == 3:
            return im2col3d(x, k_shape[:3], strides, dilation, pads, outs)
        return im2col(x, k_shape, strides, dilation, pads, *outs)

    def _col2im(self, dz, kernel, x_shape, strides, dilation, pads):
        if self.rank == 3:
            return col2im3d(dz, kernel, x_shape, strides, dilation, pads)
        return col2im(dz, kernel, x_shape, strides, dilation, pads)

    # --- shapes -------------------------------------------------------------------
    def _as_maps(self, x):
        """(N, T, *spatial, C) -> (N, T, H, W, C) after checking the rank."""
        self.check_rank(x, self.spatial + 3, f"batch of sequences of {self.spatial}-D maps "
                                              "(N, T, ..., channels)")
        if self.spatial != self.rank:
            x = x[:, :, None]
        return x

    def _from_maps(self, y):
        """Undo :meth:`_as_maps` on an output (an array or the return_state tuple)."""
        if self.spatial == self.rank:
            return y
        if isinstance(y, tuple):
            return tuple(v[..., 0, :, :] for v in y)
        return y[..., 0, :, :]

    def check_input(self, x):
        self.check_rank(x, self.rank + 3, "sequence of maps (N, T, ..., C)")
        self.check_last_dim(x, self.kernel.shape[-2])
        # one sample's T zero-padded frames and T input projections, against the cap
        # before allocating ('same' padding with a huge dilation pads by (k-1)*d)
        outs, pads = self._geometry((1,) + x.shape[2:], self.kernel.shape, self.strides, self.padding,
                                    self.dilation)
        t = x.shape[1]
        check_sample_elements(self, (t,) + _padded_sizes(x.shape[2:-1], pads) + x.shape[-1:],
                              "zero-padded input frames")
        check_sample_elements(self, (t,) + tuple(outs) + (4 * self.units,), "input projection")

    def _maps_mask(self, x, mask):
        """The mask as the scan takes it, for input maps ``x`` (N, T, H, W, C) (a 1-D
        layer's with H = 1): None, (N, T), or a per-pixel (N, T, *P) whose P are the
        output maps' leading sizes (a 1-D layer's gets the height axis)."""
        if mask is None or np.ndim(mask) == 2:
            return mask
        outs = self._geometry((1,) + x.shape[2:], self.kernel.shape, self.strides, self.padding,
                              self.dilation)[0][self.rank - self.spatial:]
        p = tuple(np.shape(mask)[2:])
        if np.shape(mask)[:2] != x.shape[:2] or len(p) > self.spatial or p != tuple(outs[:len(p)]):
            raise UnsupportedLayerError(
                f"{self.class_name} layer '{self.name}': a mask of shape {np.shape(mask)} does not "
                f"fit the output maps {tuple(outs)}: Keras applies a per-pixel mask (batch, time, "
                f"*spatial) to each output pixel, which needs output maps of the input's size "
                f"(padding='same', strides 1); Keras itself fails on this model. Use padding='same' "
                f"and strides 1, or give the layer a per-timestep (batch, time) mask")
        return mask[:, :, None] if self.spatial != self.rank else mask

    # --- the two convolutions -----------------------------------------------------
    def project(self, x, mask=None):
        """conv(x_t, W) + b for all T*N frames at once: (T, N, Ho, Wo, 4F)."""
        n, t = x.shape[:2]
        frames = np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape((t * n,) + x.shape[2:])
        z = self._conv(frames, self.kernel, self.strides, self.padding, self.dilation)
        if self.input_bias is not None:
            z += self.input_bias
        return z.reshape((t, n) + z.shape[1:])

    def recurrent_project(self, h):
        """conv(h_{t-1}, U, strides 1, 'same') of the state maps (n, Ho, Wo, F)."""
        one = (1,) * self.rank
        return self._conv(h, self.recurrent_kernel, one, "same", one)

    def _recurrent_pads(self, h_shape):
        one = (1,) * self.rank
        return self._geometry(h_shape, self.recurrent_kernel.shape, one, "same", one)[1]

    def recurrent_input_grad(self, da):
        """dL/dh_{t-1} = col2im of da (Keras' gate order) with Keras' recurrent kernel."""
        u = self.as_2d(self.weights[1])
        one = (1,) * self.rank
        return self._col2im(da, u, da.shape[:-1] + (self.units,), one, one, self._recurrent_pads(da.shape))

    def initial_states(self, n, xp=None):
        """Zero state maps (n, Ho, Wo, F), the input convolution's output size."""
        shape = (n,) + xp.shape[2:-1] + (self.units,)
        return (np.zeros(shape, self.kernel.dtype), np.zeros(shape, self.kernel.dtype))

    # --- forward / training -------------------------------------------------------
    def forward(self, x, mask=None):
        x = self._as_maps(x)
        return self._from_maps(super().forward(x, self._maps_mask(x, mask)))

    def forward_ids(self, ids, mask, embeddings):
        """After an Embedding (ids (N, T, *spatial)): no table folding (the input projection
        is a convolution, not a row gather), the maps are the embedding rows."""
        return self.forward(np.take(embeddings, ids, axis=0), mask)

    def forward_train(self, x, mask, ctx):
        x = self._as_maps(x)
        return self._from_maps(super().forward_train(x, self._maps_mask(x, mask), ctx))

    def backward(self, dy, need_dx=True):
        if self.spatial != self.rank:
            dy = type(dy)(None if d is None else d[..., None, :, :] for d in dy) \
                if isinstance(dy, (list, tuple)) else dy[..., None, :, :]
        dx, grads = super().backward(dy, need_dx)
        return (None if dx is None else self._from_maps(dx)), grads

    def weight_grads(self, x, tape, da_x, da_m, need_dx):
        """With da_x, da_m (T, N, Ho, Wo, 4F) of all timesteps (Keras' gate order):
        dW = im2col(x frames)^T da_x and dU = im2col(h_{t-1} frames, 'same')^T da_m (one
        GEMM each over all T*N frames), db = sum da_x, dx = col2im(da_x, W)."""
        n, t = x.shape[:2]
        g = 4 * self.units
        frames = np.ascontiguousarray(np.swapaxes(x, 0, 1)).reshape((t * n,) + x.shape[2:])
        kw, ku = self.as_2d(self.weights[0]), self.as_2d(self.weights[1])
        outs, pads = self._geometry(frames.shape, kw.shape, self.strides, self.padding, self.dilation)
        cols = self._im2col(frames, kw.shape, self.strides, self.dilation, pads, outs)
        dz = da_x.reshape(-1, g)
        grads = [np.matmul(cols.reshape(len(dz), -1).T, dz).reshape(self.weights[0].shape)]
        h = tape.h_prev.reshape((t * n,) + tape.h_prev.shape[2:])
        one = (1,) * self.rank
        hcols = self._im2col(h, ku.shape, one, one, self._recurrent_pads(h.shape), outs)
        grads.append(np.matmul(hcols.reshape(len(dz), -1).T, da_m.reshape(-1, g))
                     .reshape(self.weights[1].shape))
        if self.use_bias:
            grads.append(dz.sum(axis=0))
        if not need_dx:
            return grads, None
        dx = self._col2im(da_x.reshape((t * n,) + tuple(outs) + (g,)), kw, frames.shape, self.strides,
                          self.dilation, pads)
        return grads, np.swapaxes(dx.reshape((t, n) + frames.shape[1:]), 0, 1)


class ConvLSTM1D(ConvLSTM2D):
    """``keras.layers.ConvLSTM1D``: x (N, T, L, C), run as ConvLSTM2D on (N, T, 1, L, C)."""

    spatial = 1


class ConvLSTM3D(ConvLSTM2D):
    """``keras.layers.ConvLSTM3D``: x (N, T, D, H, W, C), the convolutions 3-D (im2col3d
    and one GEMM for all T*N frames; col2im3d for the gradients)."""

    spatial = 3
    rank = 3
