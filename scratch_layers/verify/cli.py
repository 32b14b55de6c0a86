"""``python -m scratch_layers verify MODEL``: does scratch_layers equal Keras on this model?

Loads MODEL (.keras or legacy .h5) with Keras and with scratch_layers, runs both (and
Keras' float64 twin) on ``--input`` or on generated inputs that fit the model, and
prints a per-layer table.  Exit status: 0 when every layer matches (Keras float32
within atol/rtol 1e-5, the float64 twin within 1e-9), 1 when something differs,
2 when the model or input cannot be used.  Needs Keras/TensorFlow installed.

``--backend NAME`` checks another implementation instead of scratch_layers (see
scratch_layers/verify/backends.py): ``module:callable``, an installed package's entry
point in the group ``scratchnet.backends``, or a shipped name (scratch_layers,
scratch_layers-float32, onnxruntime, course).  A backend without
``intermediate_outputs(x)`` is compared on its output only; a float32 backend is held to
float32 Keras (its twin column is reported, not gated); a model it refuses exits with 2.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ScratchError
from ..saving.loading import load_model
from .backends import DEFAULT, Refused, has_intermediate_outputs, resolve
from .keras import (
    ATOL,
    TWIN_ATOL,
    first_failing,
    generated_inputs,
    layer_divergence,
    load_input,
)

DESCRIPTION = __doc__


def _table(rows) -> str:
    head = f"{'node':28s} {'class':22s} {'shape':16s} {'max|Δ| float32':>15s} {'max|Δ| float64 twin':>20s}  result"
    lines = [head, "-" * len(head)]
    for r in rows:
        def f(v):
            return "n/a" if v is None else f"{v:.2e}"
        ok = r["allclose"] is not False and r["twin_ok"] is not False
        lines.append(f"{r['layer'][:28]:28s} {r['class'][:22]:22s} {str(r['shape'])[:16]:16s} "
                     f"{f(r['max_abs_diff']):>15s} {f(r['max_abs_diff_float64']):>20s}  {'pass' if ok else 'FAIL'}")
    return "\n".join(lines)


class _Refusing:
    """A backend's model whose methods raise a refusal as :class:`Refused`; scratch_layers'
    own ``graph`` (node classes) shows through."""

    def __init__(self, backend, model):
        self._backend, self._model = backend, model
        if hasattr(model, "graph"):
            self.graph = model.graph
        if has_intermediate_outputs(model):
            self.intermediate_outputs = lambda x: backend.call(model.intermediate_outputs, x)

    def predict(self, x):
        return self._backend.call(self._model.predict, x)


def verify(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scratch_layers verify", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Keras 3 .keras file or a legacy full-model .h5 file")
    parser.add_argument("--input", help="inputs: a .npy array (no pickles) or a .txt file with one "
                                        "text per line; default: generated from the model's input spec")
    parser.add_argument("-n", type=int, default=32, help="number of generated inputs (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    parser.add_argument("--backend", default=DEFAULT, metavar="NAME",
                        help="the implementation to check (default scratch_layers): module:callable, "
                             "an entry point of the group scratchnet.backends, or a shipped name")
    args = parser.parse_args(argv)

    try:
        backend = resolve(args.backend)
        scratch = load_model(args.model)
        x = load_input(args.input) if args.input else generated_inputs(scratch, args.n, args.seed)
        model = scratch if backend.is_default else backend.load(args.model)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ScratchError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import keras
    try:
        keras_model = keras.saving.load_model(args.model, compile=False, safe_mode=True)
    except Exception as exc:  # noqa: BLE001 - any Keras loading failure is reported as such
        print(f"error: Keras cannot load {args.model}: {exc}", file=sys.stderr)
        return 2
    try:
        precision = backend.precision_of(backend.call(model.predict, x))
        rows = layer_divergence(keras_model, _Refusing(backend, model), x, precision)
    except (ScratchError, Refused) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(x[0]) if isinstance(x, list) else len(x)
    print(f"{args.model}: {n} inputs ({'from ' + args.input if args.input else 'generated'}), "
          f"{len(scratch.graph.nodes) if backend.is_default else len(rows)} nodes in the order they run"
          + ("" if backend.is_default else f", backend {backend.name} ({precision})"
             + ("" if has_intermediate_outputs(model) else ": output only (no intermediate_outputs)")))
    print(_table(rows))
    bad = [r["layer"] for r in rows if r["allclose"] is False or r["twin_ok"] is False]
    if bad:
        first = first_failing(rows)
        print(f"FAIL: {len(bad)} node(s) differ (float32 atol {ATOL}, float64 twin {TWIN_ATOL} relative "
              f"to the output scale); the first that diverges is '{first['layer']}' "
              f"({first['class']}): " + ", ".join(bad))
        return 1
    if precision == "float32":
        print(f"OK: every node equals float32 Keras (within {ATOL}); a float32 backend's distance to the "
              "float64 twin is reported, not gated")
        return 0
    print(f"OK: every node equals Keras (float32 within {ATOL}) and its float64 twin (within "
          f"{TWIN_ATOL} relative to the output scale)")
    return 0
