"""Winograd minimal filtering for 3x3, stride-1 convolutions (Lavin and Gray, *Fast
Algorithms for Convolutional Neural Networks*, 2016), as batched GEMMs.

F(m x m, 3 x 3) computes an m x m output tile from an (m+2) x (m+2) input tile d:

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A

summed over input channels. With the kernel transform U = G g G^T done once (per
input/output channel pair) and the input transform V = B^T d B once per tile and
channel, the channel sum is one GEMM per transform point (xi, nu):

    M[xi, nu] (tiles, F) = V[xi, nu] (tiles, C) @ U[xi, nu] (C, F)

so the multiplications drop from 9 m^2 to (m+2)^2 per output tile and channel pair:
2.25x fewer for F(2x2, 3x3), 4x fewer for F(4x4, 3x3). The tiles are gathered by one
strided copy (as im2col); each transform applies its small matrix along one tile axis,
then the other, as two GEMMs over contiguous rows, never a loop over pixels. Rounding:
the transforms add and scale by small constants, so the result differs from direct
convolution only by rounding (float64: ~1e-15 relative); F(4x4) amplifies float32
rounding more than F(2x2) (its constants reach 8 and 1/24).

Each stage (padded input, gathered tiles, half-transformed, V, M, half-transformed, Y,
pooled) reads the previous one only, so they alternate between two per-thread workspace
buffers, "conv_a" and "conv_b", which every convolution path shares (a thread runs one
layer at a time).
"""
from __future__ import annotations

import functools
import math

import numpy as np
from numpy.lib.stride_tricks import as_strided

from .. import workspace
from ..profiling import gemm

# (B^T, G, A^T) of F(m, 3), from Lavin and Gray (2016), section 4.1 and 4.2.
_TRANSFORMS = {
    2: ([[1, 0, -1, 0],
         [0, 1, 1, 0],
         [0, -1, 1, 0],
         [0, 1, 0, -1]],
        [[1, 0, 0],
         [1 / 2, 1 / 2, 1 / 2],
         [1 / 2, -1 / 2, 1 / 2],
         [0, 0, 1]],
        [[1, 1, 1, 0],
         [0, 1, -1, -1]]),
    4: ([[4, 0, -5, 0, 1, 0],
         [0, -4, -4, 1, 1, 0],
         [0, 4, -4, -1, 1, 0],
         [0, -2, -1, 2, 1, 0],
         [0, 2, -1, -2, 1, 0],
         [0, 4, 0, -5, 0, 1]],
        [[1 / 4, 0, 0],
         [-1 / 6, -1 / 6, -1 / 6],
         [-1 / 6, 1 / 6, -1 / 6],
         [1 / 24, 1 / 12, 1 / 6],
         [1 / 24, -1 / 12, 1 / 6],
         [0, 0, 1]],
        [[1, 1, 1, 1, 1, 0],
         [0, 1, -1, 2, -2, 0],
         [0, 1, 1, 4, 4, 0],
         [0, 1, -1, 8, -8, 1]]),
}
TILE_SIZES = tuple(_TRANSFORMS)


def transforms(m):
    """``(B^T, G, A^T)`` of F(m x m, 3 x 3) as float64 arrays."""
    bt, g, at = _TRANSFORMS[m]
    return np.array(bt, float), np.array(g, float), np.array(at, float)


def transform_kernel(kernel, m, dtype):
    """U = G g G^T for every (input, output) channel pair of a (3, 3, C, F) kernel, as
    (alpha^2, C, F) in ``dtype``, alpha = m + 2 (computed in float64, rounded once)."""
    _, g, _ = transforms(m)
    u = np.einsum("xa,abcf,yb->xycf", g, np.asarray(kernel, np.float64), g)
    return np.ascontiguousarray(u.reshape(-1, *kernel.shape[2:]), dtype=dtype)


def tiles(ho, wo, m):
    """Tile rows and columns covering an ho x wo output with m x m tiles."""
    return -(-ho // m), -(-wo // m)


def choose_tile(ho, wo):
    """The tile size m in TILE_SIZES with the fewest transform points over the output
    ((m+2)^2 per tile times the tile count; ties go to the smaller tile)."""
    return min(TILE_SIZES, key=lambda m: ((m + 2) ** 2 * math.prod(tiles(ho, wo, m)), m))


def transform_input(x, m, pads, th, tw):
    """V = B^T d B for every (m+2) x (m+2) tile d of the zero-padded input, tile origins
    (i*m, j*m), i < th, j < tw: (alpha^2, N*th*tw, C). The tiles are gathered once (one
    strided copy, as im2col), then B^T is applied along both tile axes by
    :func:`_both_axes`."""
    alpha = m + 2
    n, h, w, c = x.shape
    (pt, _), (pl, _) = pads
    xp = workspace.buffer("conv_a", (n, th * m + 2, tw * m + 2, c), x.dtype)
    rows, cols = min(h, th * m + 2 - pt), min(w, tw * m + 2 - pl)
    xp[:, :pt] = 0
    xp[:, pt + rows:] = 0
    xp[:, pt:pt + rows, :pl] = 0
    xp[:, pt:pt + rows, pl + cols:] = 0
    xp[:, pt:pt + rows, pl:pl + cols] = x[:, :rows, :cols]
    s0, s1, s2, s3 = xp.strides
    d = workspace.buffer("conv_b", (alpha, alpha, n, th, tw, c), x.dtype)
    np.copyto(d, as_strided(xp, d.shape, (s1, s2, s0, m * s1, m * s2, s3), writeable=False))
    v = _both_axes(_transform(m, 0, x.dtype), d, "conv_a", "conv_b")
    return v.reshape(alpha * alpha, n * th * tw, c)


def transform_output(mt, m):
    """Y = A^T M A for every tile: ``mt`` (alpha^2, T, F) -> (m, m, T, F), output offset
    (r, s) of every tile as one contiguous slab (:func:`_both_axes` with A^T)."""
    alpha = m + 2
    y = _both_axes(_transform(m, 2, mt.dtype), mt.reshape(alpha, alpha, -1), "conv_b", "conv_a")
    return y.reshape((m, m) + mt.shape[1:])


def _both_axes(t, z, mid, out):
    """``t`` (r, alpha) applied along both tile axes of ``z`` (alpha, alpha, X):
    ``out[i, j] = sum_ab t[i, a] z[a, b] t[j, b]`` -> (r, r, X), as two GEMMs (first axis,
    then the second axis of each of the r slabs), each streaming contiguous rows: r alpha
    (alpha + r) multiplies per element instead of the (r alpha)^2 of one GEMM with t ⊗ t (measured: about
    2x faster when the block stays in the L2 cache, equal when it streams from memory).
    ``mid`` and ``out``: the workspace buffers for the two stages."""
    r, alpha = t.shape
    x = z.shape[-1] if z.ndim == 3 else z[0, 0].size
    flat = z.reshape(alpha, -1)
    rows = workspace.buffer(mid, (r, alpha * x), z.dtype)
    for j in range(0, alpha * x, COLUMN_BLOCK):
        gemm(t, flat[:, j:j + COLUMN_BLOCK], out=rows[:, j:j + COLUMN_BLOCK])
    return gemm(t, rows.reshape(r, alpha, x), out=workspace.buffer(out, (r, r, x), z.dtype))


# Columns per GEMM of a transform's first stage: a (r, alpha) @ (alpha, N) product with a
# few rows runs 3x slower once N passes ~20,000 (OpenBLAS packs the whole panel, which
# leaves the L2 cache; measured on the 2-core Xeon: N = 43,008 in one call 114 us, in
# blocks of 16,384 34 us)
COLUMN_BLOCK = 16384


@functools.lru_cache(maxsize=None)
def _transform(m, which, dtype):
    """B^T (``which`` 0) or A^T (2) of F(m, 3) in ``dtype``; built once per (m, dtype)."""
    t = transforms(m)[which].astype(dtype)
    t.flags.writeable = False  # shared by every call
    return t


def winograd_conv2d(x, u, m, pads, ho, wo, pool=None):
    """Stride-1, undilated 3x3 convolution of x (N, H, W, C) with the transformed kernel
    ``u`` (alpha^2, C, F) (:func:`transform_kernel`), TF padding ``pads`` ((pt, pb), (pl,
    pr)) and output size ho x wo -> (N, ho, wo, F).

    ``pool`` (ph, pw), when the windows of a max pool with that size and stride lie inside
    the tiles (:func:`pools_in_tiles`): the max pool (NaN-ignoring, as
    :func:`~scratch_layers.layers.pooling.pool2d`) of that output instead, taken over each
    tile's own outputs, so the full-size output is never written."""
    n, _, _, c = x.shape
    f = u.shape[-1]
    th, tw = tiles(ho, wo, m)
    v = transform_input(x, m, pads, th, tw)
    mt = gemm(v, u, out=workspace.buffer("conv_a", (len(v), n * th * tw, f), x.dtype))
    y = transform_output(mt, m).reshape(m, m, n, th, tw, f)
    if pool is not None:
        # each window's maximum over contiguous (T, F) slabs, then one strided copy
        ph, pw = pool
        pooled = workspace.buffer("conv_b", (m // ph, m // pw, n, th, tw, f), x.dtype)
        for a in range(m // ph):
            for b in range(m // pw):
                window = [y[a * ph + i, b * pw + j] for i in range(ph) for j in range(pw)]
                dest = pooled[a, b]
                if len(window) == 1:
                    np.copyto(dest, window[0])
                else:
                    np.fmax(window[0], window[1], out=dest)
                for other in window[2:]:
                    np.fmax(dest, other, out=dest)
        out = np.empty((n, th, m // ph, tw, m // pw, f), x.dtype)
        np.copyto(out, pooled.transpose(2, 3, 0, 4, 1, 5))
        return out.reshape(n, th * (m // ph), tw * (m // pw), f)
    out = np.empty((n, th, m, tw, m, f), x.dtype)
    np.copyto(out, y.transpose(2, 3, 0, 4, 1, 5))
    out = out.reshape(n, th * m, tw * m, f)
    if th * m != ho or tw * m != wo:
        out = np.ascontiguousarray(out[:, :ho, :wo])
    return out


def pools_in_tiles(m, ho, wo, pool, strides):
    """Whether a max pool of size ``pool`` and stride ``strides`` over an ho x wo output
    reads only whole windows that lie inside single m x m tiles, so it can be taken tile by
    tile: pool equal to stride, dividing m, and the tiles exactly covering the output
    ('same' then pads nothing)."""
    return (tuple(pool) == tuple(strides) and m % pool[0] == 0 and m % pool[1] == 0
            and ho % m == 0 and wo % m == 0)

