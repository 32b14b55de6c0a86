"""Slow, obviously-correct reference implementations (explicit loops) used to
cross-check the vectorised scratch_layers kernels on small inputs."""
import math

import numpy as np


def same_pads(size, k, s, d=1):
    out = math.ceil(size / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
    return out, total // 2


def _ref_geometry(h, w, kh, kw, sh, sw, dh, dw, padding):
    """``(ho, wo, pt, pl)``: output size and top/left padding, TF 'same' or 'valid'."""
    if padding == "same":
        ho, pt = same_pads(h, kh, sh, dh)
        wo, pl = same_pads(w, kw, sw, dw)
        return ho, wo, pt, pl
    return (h - (kh - 1) * dh - 1) // sh + 1, (w - (kw - 1) * dw - 1) // sw + 1, 0, 0


def conv2d_ref(x, kernel, strides=(1, 1), padding="valid", dilation=(1, 1)):
    n, h, w, c = x.shape
    kh, kw, _, f = kernel.shape
    sh, sw = strides
    dh, dw = dilation
    ho, wo, pt, pl = _ref_geometry(h, w, kh, kw, sh, sw, dh, dw, padding)
    y = np.zeros((n, ho, wo, f))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for a in range(kh):
                    for e in range(kw):
                        r = i * sh + a * dh - pt
                        q = j * sw + e * dw - pl
                        if 0 <= r < h and 0 <= q < w:  # outside = zero padding
                            for ch in range(c):
                                for o in range(f):
                                    y[b, i, j, o] += x[b, r, q, ch] * kernel[a, e, ch, o]
    return y


def depthwise_conv2d_ref(x, kernel, strides=(1, 1), padding="valid", dilation=(1, 1)):
    """Depthwise: input channel ch convolved with its own kernel[..., ch, m], written to
    output channel ch*M + m (TF's order); explicit loops, zero padding skipped."""
    n, h, w, c = x.shape
    kh, kw, _, mult = kernel.shape
    sh, sw = strides
    dh, dw = dilation
    ho, wo, pt, pl = _ref_geometry(h, w, kh, kw, sh, sw, dh, dw, padding)
    y = np.zeros((n, ho, wo, c * mult))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for a in range(kh):
                    for e in range(kw):
                        r = i * sh + a * dh - pt
                        q = j * sw + e * dw - pl
                        if 0 <= r < h and 0 <= q < w:
                            for ch in range(c):
                                for o in range(mult):
                                    y[b, i, j, ch * mult + o] += x[b, r, q, ch] * kernel[a, e, ch, o]
    return y


def _pool_windows(x_shape, pool, strides, padding):
    """Output size and, per output cell (i, j), the real (non-pad) input cells of its
    window in row-major order."""
    _, h, w, _ = x_shape
    ph, pw = pool
    sh, sw = strides
    if padding == "same":
        ho, pt = same_pads(h, ph, sh)
        wo, pl = same_pads(w, pw, sw)
    else:
        ho = (h - ph) // sh + 1
        wo = (w - pw) // sw + 1
        pt = pl = 0
    cells = {(i, j): [(i * sh + a - pt, j * sw + e - pl) for a in range(ph) for e in range(pw)
                      if 0 <= i * sh + a - pt < h and 0 <= j * sw + e - pl < w]
             for i in range(ho) for j in range(wo)}
    return ho, wo, cells


def pool2d_ref(x, pool, strides, padding, mode):
    n, _, _, c = x.shape
    ho, wo, cells = _pool_windows(x.shape, pool, strides, padding)
    y = np.zeros((n, ho, wo, c))
    for b in range(n):
        for (i, j), window in cells.items():
            for ch in range(c):
                vals = [x[b, r, q, ch] for r, q in window]  # pads are ignored
                y[b, i, j, ch] = max(vals) if mode == "max" else sum(vals) / len(vals)
    return y


def pool2d_backward_ref(x, dy, pool, strides, padding, mode):
    """dL/dx of pooling: max sends each window's gradient to its first maximal cell
    (row-major, as TF's MaxPoolGrad); average splits it evenly over the real cells."""
    n, _, _, c = x.shape
    _, _, cells = _pool_windows(x.shape, pool, strides, padding)
    dx = np.zeros(x.shape)
    for b in range(n):
        for (i, j), window in cells.items():
            for ch in range(c):
                if mode == "max":
                    vals = [x[b, r, q, ch] for r, q in window]
                    r, q = window[vals.index(max(vals))]
                    dx[b, r, q, ch] += dy[b, i, j, ch]
                else:
                    for r, q in window:
                        dx[b, r, q, ch] += dy[b, i, j, ch] / len(window)
    return dx
