"""Array maths that several layers share (one copy each): Keras' epsilon, summing a
broadcast gradient back to its shape, and L2 normalization with its gradient."""
import numpy as np

# keras.backend.epsilon(): the loss's clip, Normalization's floor on the standard deviation,
# the default of L2 normalization.
KERAS_EPSILON = 1e-7


def sum_to_shape(g, shape):
    """Sum a broadcast gradient ``g`` back to ``shape`` (leading axes, then size-1 axes)."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, (n, m) in enumerate(zip(shape, g.shape)) if n == 1 and m != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def l2_normalize(x, axis, epsilon=KERAS_EPSILON):
    """keras ops.nn.normalize(order=2): x * minimum(rsqrt(sum(x^2)), 1 / epsilon).
    Returns ``(y, (r, inv))``, what :func:`l2_normalize_grad` needs."""
    ss = np.sum(np.square(x), axis=axis, keepdims=True)
    with np.errstate(divide="ignore"):
        r = 1.0 / np.sqrt(ss)
    inv = np.minimum(r, x.dtype.type(1.0 / epsilon))
    return x * inv, (r, inv)


def l2_normalize_grad(x, dy, axis, r, inv, epsilon=KERAS_EPSILON):
    """y = x inv, inv = min(r, 1/eps), r = rsqrt(ss), ss = sum(x^2): TF's RsqrtGrad is
    -0.5 r^3 and the Minimum gradient goes to r where r <= 1/eps."""
    d_inv = np.sum(dy * x, axis=axis, keepdims=True)
    passes = r <= x.dtype.type(1.0 / epsilon)
    with np.errstate(invalid="ignore", over="ignore"):
        d_ss = np.where(passes, -0.5 * r ** 3 * d_inv, 0)
    return dy * inv + 2.0 * x * d_ss
