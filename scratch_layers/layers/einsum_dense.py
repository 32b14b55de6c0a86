"""``EinsumDense``: a Dense layer written as an einsum equation."""
import re
import string

import numpy as np

from .. import activations
from ..errors import InputError, ModelFileError, UnsupportedLayerError
from ..ops import sum_to_shape
from .layer import KeepsPreactivation, Layer

# ----------------------------------------------------------------------------- einsum


def _parse_equation(equation, where):
    """``"ab,bc->ac"`` / ``"...b,bc->...c"`` / ``"ab...,bc->ac..."`` ->
    (x letters, kernel letters, y letters, ellipsis side: None, "left" or "right")."""
    eq = str(equation).replace(" ", "")
    m = re.fullmatch(r"(\.\.\.)?([a-zA-Z]+)(\.\.\.)?,([a-zA-Z]+)->(\.\.\.)?([a-zA-Z]+)(\.\.\.)?", eq)
    if m is None:
        raise ModelFileError(f"{where}: invalid einsum equation {equation!r}")
    xl, xs, xr, ks, yl, ys, yr = m.groups()
    if bool(xl) != bool(yl) or bool(xr) != bool(yr) or (xl and xr):
        raise UnsupportedLayerError(f"{where}: unsupported einsum equation {equation!r}")
    for spec in (xs, ks, ys):
        if len(set(spec)) != len(spec):
            raise UnsupportedLayerError(f"{where}: einsum equation {equation!r} repeats an index")
    for c in ks:
        if c not in xs and c not in ys:
            raise ModelFileError(f"{where}: kernel index '{c}' of {equation!r} is in neither "
                                 "the input nor the output")
    side = "left" if xl else "right" if xr else None
    return xs, ks, ys, side




class EinsumDense(KeepsPreactivation, Layer):
    """y = act(z), z = einsum(equation, x, kernel) + bias (bias broadcast on the trailing
    output axes from the first ``bias_axes`` letter on, as Keras builds it).

    Backward (numpy-ml style, letters as in the equation ``X,K->Y``)::

        dz = act'(z) dy
        dK = einsum("X,Y->K", x, dz)           db = dz summed down to the bias shape
        dx = einsum("Y,K->X", dz, K)           (an x letter in neither Y nor K: broadcast)
    """

    supports_masking = True

    @classmethod
    def _spec(cls, config):
        where = f"EinsumDense layer '{config.get('name', '?')}'"
        xs, ks, ys, side = _parse_equation(config["equation"], where)
        out = config.get("output_shape")
        out = [out] if isinstance(out, int) or out is None else list(out)
        # the user's output_shape covers the output letters after the batch (Keras' own
        # _analyze_split_string), or all of them when the batch sits in a left '...'
        ys_known = ys if side == "left" else ys[1:]
        if len(out) != len(ys_known):
            out = [None] * len(ys_known)
        known = {c: (int(n) if n is not None else None) for c, n in zip(ys_known, out)}
        return xs, ks, ys, side, known

    @classmethod
    def weight_shapes(cls, config):
        """kernel: one size per kernel letter (the output size where config's output_shape
        gives it, else the symbol of the input axis); bias (when ``bias_axes``): the output
        letters from the first bias letter on (1 where not a bias letter)."""
        xs, ks, ys, side, known = cls._spec(config)

        def dim(c):
            return known.get(c) if known.get(c) is not None else f"einsum_{c}"
        shapes = [tuple(dim(c) for c in ks)]
        bias_axes = config.get("bias_axes")
        if bias_axes:
            if side == "right":
                shapes.append(None)  # trailing 1s for the elided axes: unknown from config
            else:
                first = min(ys.find(c) for c in bias_axes)
                shapes.append(tuple(dim(c) if c in bias_axes else 1 for c in ys[first:]))
        return shapes

    def __init__(self, config, weights, class_name=None):
        self.n_weights = 2 if config.get("bias_axes") else 1
        super().__init__(config, weights, class_name)
        for opt in ("lora_rank", "quantization_config"):
            if config.get(opt):
                raise self.unsupported(opt, config.get(opt))
        where = f"{self.class_name} layer '{self.name}'"
        self.xs, self.ks, self.ys, self.side, _ = self._spec(config)
        for c in config.get("bias_axes") or "":
            if c not in self.ys:
                raise ModelFileError(f"{where}: bias axis '{c}' is not an output index")
        self.kernel = weights[0]
        self.bias = weights[1] if self.n_weights == 2 else None
        if self.kernel.ndim != len(self.ks):
            raise ModelFileError(f"{where}: kernel of shape {self.kernel.shape} does not fit "
                                 f"the equation {config['equation']!r}")
        self.activation = activations.get(config.get("activation"), where)

    def _equations(self, ndim):
        """The equation with '...' replaced by explicit letters for a rank-``ndim`` input:
        (forward, dx, dK) equations and the x letters missing from the dx equation."""
        n = ndim - len(self.xs)
        if n < 0 or (n and self.side is None):
            raise InputError(f"{self.class_name} layer '{self.name}': input of rank {ndim} "
                             f"does not fit the equation {self.config['equation']!r}")
        free = [c for c in string.ascii_letters if c not in self.xs + self.ks + self.ys][:n]
        e = "".join(free)
        xs, ys = (e + self.xs, e + self.ys) if self.side == "left" else (self.xs + e, self.ys + e)
        lost = [c for c in xs if c not in ys and c not in self.ks]
        dx_spec = "".join(c for c in xs if c not in lost)
        return (f"{xs},{self.ks}->{ys}", f"{ys},{self.ks}->{dx_spec}",
                f"{xs},{ys}->{self.ks}", xs, dx_spec)

    def _z(self, x):
        fwd = self._equations(x.ndim)[0]
        try:
            z = np.einsum(fwd, x, self.kernel, optimize=True)
        except ValueError:
            raise InputError(f"{self.class_name} layer '{self.name}': input of shape {x.shape} "
                             f"does not fit the kernel {self.kernel.shape} "
                             f"({self.config['equation']!r})") from None
        if self.bias is not None:
            z = z + self.bias
        return z

    def forward(self, x, mask=None):
        return self.activation(self._z(x))

    def backward(self, dy, need_dx=True):
        x, z, y = self._saved
        dz = activations.backward(self.activation, z, y, dy, f"EinsumDense layer '{self.name}'")
        _, dx_eq, dk_eq, xs, dx_spec = self._equations(x.ndim)
        grads = [np.einsum(dk_eq, x, dz, optimize=True)]
        if self.bias is not None:
            grads.append(sum_to_shape(dz, self.bias.shape).reshape(self.bias.shape))
        dx = None
        if need_dx:
            dx = np.einsum(dx_eq, dz, self.kernel, optimize=True)
            if dx_spec != xs:  # x letters summed away in the forward: broadcast back
                dx = np.broadcast_to(
                    np.expand_dims(dx, tuple(i for i, c in enumerate(xs) if c not in dx_spec)),
                    x.shape).copy()
        return dx, grads


def sub_einsum(name, equation, out_shape, bias_axes, weights, activation=None):
    cfg = {"name": name, "equation": equation, "output_shape": list(out_shape),
           "bias_axes": bias_axes, "activation": activation}
    return EinsumDense(cfg, weights, "EinsumDense")
