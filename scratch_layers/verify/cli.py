"""``python -m scratch_layers verify MODEL``: does scratch_layers equal Keras on this model?

Loads MODEL (.keras or legacy .h5) with Keras and with scratch_layers, runs both (and
Keras' float64 twin) on ``--input`` or on generated inputs that fit the model, and
prints a per-layer table.  Exit status: 0 when every layer matches (Keras float32
within atol/rtol 1e-5, the float64 twin within 1e-9), 1 when something differs,
2 when the model or input cannot be used.  Needs Keras/TensorFlow installed.
"""
from __future__ import annotations

import argparse
import sys

from ..errors import ScratchError
from ..saving.loading import load_model
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


def verify(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scratch_layers verify", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a Keras 3 .keras file or a legacy full-model .h5 file")
    parser.add_argument("--input", help="inputs: a .npy array (no pickles) or a .txt file with one "
                                        "text per line; default: generated from the model's input spec")
    parser.add_argument("-n", type=int, default=32, help="number of generated inputs (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated inputs (default 0)")
    args = parser.parse_args(argv)

    try:
        scratch = load_model(args.model)
        x = load_input(args.input) if args.input else generated_inputs(scratch, args.n, args.seed)
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
        rows = layer_divergence(keras_model, scratch, x)
    except ScratchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    n = len(x[0]) if isinstance(x, list) else len(x)
    print(f"{args.model}: {n} inputs ({'from ' + args.input if args.input else 'generated'}), "
          f"{len(scratch.graph.nodes)} nodes in the order they run")
    print(_table(rows))
    bad = [r["layer"] for r in rows if r["allclose"] is False or r["twin_ok"] is False]
    if bad:
        first = first_failing(rows)
        print(f"FAIL: {len(bad)} node(s) differ (float32 atol {ATOL}, float64 twin {TWIN_ATOL} relative "
              f"to the output scale); the first that diverges is '{first['layer']}' "
              f"({first['class']}): " + ", ".join(bad))
        return 1
    print(f"OK: every node equals Keras (float32 within {ATOL}) and its float64 twin (within "
          f"{TWIN_ATOL} relative to the output scale)")
    return 0
