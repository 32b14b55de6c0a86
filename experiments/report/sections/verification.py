"""The Verification section: every trained model against Keras, and per-layer divergence tables."""
from __future__ import annotations

from ..markup import esc, table


def verification_section(doc: dict, layer_tables: list[dict]) -> str:
    runs = {r["model"]: (v["family"], r) for v in doc["variants"] for r in v["runs"]}
    rows = [[esc(m), fam, r["seed"], r["n_test"], f"{r['agreement']:.2%}", f"{r['max_abs_diff']:.2e}",
             "n/a" if r.get("max_abs_diff_float64") is None else f"{r['max_abs_diff_float64']:.2e}",
             "yes" if r["passed"] else "<b>NO</b>"] for m, (fam, r) in sorted(runs.items())]
    out = ['<h2 id="verification">Verification, run by run</h2>',
           f"<p>Each trained model (configuration × seed) runs through Keras and scratch_layers on "
           f"its whole test split. {len(rows)} models.</p>",
           "<details><summary>All models</summary>",
           table(["model", "family", "seed", "test items", "argmax agreement", "max|Δp| vs Keras",
                  "max|Δp| vs float64 twin", "passed"], rows), "</details>"]
    for lt in layer_tables:
        out.append(f"<h4>Per-layer divergence: {esc(lt['model'])} (first {lt['n_items']} test items)</h4>")
        has_twin = any("max_abs_diff_float64" in r for r in lt["rows"])
        out.append(table(
            ["layer", "scratch class", "output shape", "max |scratch − Keras|"]
            + (["max |scratch − float64 twin|"] if has_twin else []),
            [[esc(r["layer"]), r["class"], esc(r["shape"]),
              "n/a" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.2e}"]
             + ([("n/a" if r.get("max_abs_diff_float64") is None else f"{r['max_abs_diff_float64']:.2e}")]
                if has_twin else []) for r in lt["rows"]]))
    return "".join(out)
