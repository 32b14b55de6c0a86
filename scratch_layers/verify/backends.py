"""The implementation under test as a plugin: a *backend*.

A backend is a callable ``load(path) -> model``; the model has ``predict(x)`` with
Keras' input and output conventions (the same ``x`` as ``keras_model.predict(x)``, the
same output shape).  It may also offer

* ``intermediate_outputs(x)`` -> ``{node name: array}`` (names as Keras' graph names
  them, see :func:`scratch_layers.verify.keras.keras_node_outputs`): enables the
  per-node divergence, so a wrong backend is named down to the node;
* ``loss_and_gradients(x, y)`` -> ``(loss, grads)``: as scratch_layers' own
  ``Model.loss_and_gradients``, ``loss`` a float, Keras' ``SparseCategoricalCrossentropy()``
  (mean over the batch, inference mode) of the output against integer labels ``y``, and
  ``grads`` a list of arrays, the gradient of ``loss`` for each weight of
  ``keras_model.trainable_weights`` in that order and shape: enables the backward checks
  (``tests/test_backward_models.py``); without it they are refused.

A model the backend cannot run raises ``NotImplementedError``, or an error class the
backend declares in a ``refuses`` tuple on its ``load`` callable (or its module): it is
reported as *refused*, not failed.  Anything else it raises is a failure.

Precision: a backend whose ``predict`` returns float64 is held to Keras' float64 twin
(``TWIN_ATOL``, relative to the output scale) as scratch_layers is; one that returns
float32 (or declares ``precision = "float32"``) is held to float32 Keras (``ATOL`` +
``RTOL``), and its distance to the twin is reported, not gated.

Naming a backend (:func:`resolve`): ``module:callable``, a name registered in the
entry-point group ``scratchnet.backends`` by an installed package, or a shipped name
(:data:`SHIPPED`).  A name that does not resolve raises :class:`BackendError` saying
which part is missing.  Never imports TensorFlow (the ONNX Runtime backend imports it
when it loads a model).
"""
from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass, field

from ..errors import ScratchError, UnsupportedLayerError

ENTRY_POINT_GROUP = "scratchnet.backends"
DEFAULT = "scratch_layers"
# The backends this project ships, by name (pyproject.toml registers the same names in
# ENTRY_POINT_GROUP for an installed scratchnet; this table makes them work from a clone).
SHIPPED = {
    "scratch_layers": "scratch_layers.verify.backends:scratch_float64",
    "scratch_layers-float32": "scratch_layers.verify.backends:scratch_float32",
    "onnxruntime": "experiments.onnx_backend:load",
    "course": "examples.course_backend:load",
}
PRECISIONS = ("float64", "float32")


class BackendError(ScratchError):
    """A backend that cannot be used at all: a name that resolves to nothing, a module
    that does not import, a ``load`` that returns an object without ``predict``."""


class Refused(Exception):
    """The backend declined this model (``NotImplementedError`` or a declared class)."""

    def __init__(self, backend: str, reason: str):
        super().__init__(f"refused by backend {backend!r}: {reason}")
        self.backend, self.reason = backend, reason


@dataclass(frozen=True)
class Backend:
    """A resolved backend: its name as given, its ``load`` and what counts as a refusal."""
    name: str
    load_fn: object = field(repr=False)
    refuses: tuple = (NotImplementedError,)
    precision: str | None = None   # None: read off predict's output dtype

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT

    def refusal(self, exc: BaseException) -> Refused | None:
        """``exc`` as a :class:`Refused` if it is one of this backend's refusals."""
        if isinstance(exc, self.refuses):
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            return Refused(self.name, reason)
        return None

    def load(self, path):
        """``load_fn(path)``, checked: a refusal raises :class:`Refused`, an object without
        a callable ``predict`` raises :class:`BackendError`."""
        try:
            model = self.load_fn(str(path))
        except Exception as exc:  # noqa: BLE001 - a refusal is re-raised as Refused, the rest as is
            refused = self.refusal(exc)
            if refused is None:
                raise
            raise refused from exc
        if not callable(getattr(model, "predict", None)):
            raise BackendError(
                f"backend {self.name!r}: load({path!s}) returned {type(model).__name__!s}, which has no "
                "predict(x) method; a backend's load(path) must return an object with predict(x) "
                "(and optionally intermediate_outputs(x), loss_and_gradients(x, y))")
        return model

    def call(self, fn, *args):
        """``fn(*args)`` (a model method), with a refusal raised as :class:`Refused`."""
        try:
            return fn(*args)
        except Exception as exc:  # noqa: BLE001 - see load
            refused = self.refusal(exc)
            if refused is None:
                raise
            raise refused from exc

    def precision_of(self, output) -> str:
        """The gate this backend's outputs are held to: its declared precision, else the
        output's dtype (float32 output: float32 Keras' tolerance; otherwise the twin's)."""
        if self.precision is not None:
            return self.precision
        import numpy as np
        arrays = output if isinstance(output, (list, tuple)) else \
            list(output.values()) if isinstance(output, dict) else [output]
        return "float32" if any(np.asarray(a).dtype in (np.float32, np.float16) for a in arrays) else "float64"


def has_intermediate_outputs(model) -> bool:
    return callable(getattr(model, "intermediate_outputs", None))


def has_gradients(model) -> bool:
    return callable(getattr(model, "loss_and_gradients", None))


def _import_target(name: str, target: str):
    """``module:callable`` -> the callable; a BackendError names the missing part."""
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise BackendError(f"backend {name!r}: {target!r} is not of the form module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendError(f"backend {name!r}: module {module_name!r} does not import "
                           f"({type(exc).__name__}: {exc}); is it installed, or on sys.path "
                           "(run from the repository root)?") from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise BackendError(f"backend {name!r}: module {module_name!r} has no attribute {attr!r} "
                               f"(the load callable); it defines: "
                               f"{', '.join(n for n in dir(module) if not n.startswith('_'))[:300]}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise BackendError(f"backend {name!r}: {target} is a {type(obj).__name__}, not a callable "
                           "load(path) -> model")
    return obj, module


def registered() -> dict[str, importlib.metadata.EntryPoint]:
    """The backends installed packages register in :data:`ENTRY_POINT_GROUP`."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def resolve(name: str) -> Backend:
    """The backend called ``name``: ``module:callable``, a shipped name, or an entry point of
    :data:`ENTRY_POINT_GROUP`."""
    if ":" in name:
        target = name
    elif name in SHIPPED:
        target = SHIPPED[name]
    else:
        eps = registered()
        if name not in eps:
            known = sorted(set(SHIPPED) | set(eps))
            raise BackendError(
                f"unknown backend {name!r}: not a shipped backend, and no installed package registers "
                f"it in the entry-point group {ENTRY_POINT_GROUP!r}. Known: {', '.join(known)}; or give "
                "module:callable (e.g. examples.course_backend:load)")
        target = eps[name].value
    fn, module = _import_target(name, target)
    declared = getattr(fn, "refuses", None) or getattr(module, "refuses", None) or ()
    declared = tuple(declared) if isinstance(declared, (tuple, list)) else (declared,)
    for cls in declared:
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            raise BackendError(f"backend {name!r}: refuses must hold exception classes, got {cls!r}")
    precision = getattr(fn, "precision", None) or getattr(module, "precision", None)
    if precision is not None and precision not in PRECISIONS:
        raise BackendError(f"backend {name!r}: precision must be one of {PRECISIONS}, got {precision!r}")
    return Backend(name, fn, (NotImplementedError, *declared), precision)


# ------------------------------------------------------------------ the shipped scratch_layers backends

def scratch_float64(path):
    """scratch_layers in float64 (the default backend)."""
    from ..saving.loading import load_model
    return load_model(path)


def scratch_float32(path):
    """scratch_layers computing in Keras' own precision (``dtype="float32"``)."""
    from ..saving.loading import load_model
    return load_model(path, dtype="float32")


# a layer or option scratch_layers does not implement is a refusal, not a failure
scratch_float64.refuses = scratch_float32.refuses = (UnsupportedLayerError,)
scratch_float32.precision = "float32"
