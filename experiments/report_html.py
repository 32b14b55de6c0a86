"""HTML sections of the report, from the results document (:mod:`experiments.results`).

The page opens with the answer (verification, the validation-selected configuration
per family, speed ratios, a table of contents); the studies, the selected models,
verification details, recipes and provenance follow.
"""
from __future__ import annotations

import html

import numpy as np

from . import figures

STYLE = """<style>
body{color:#1d1d1d}
a{color:#1a56a8}
#results-table{color:#333}
body{display:flex;flex-direction:column}
body>*{order:2}
#title,body>p:first-of-type{order:0}
div.summary{order:1}
div.scratchnet{max-width:1100px;font-size:14px;line-height:1.45}
div.scratchnet a{color:#1a56a8}
div.scratchnet h2{margin-top:28px;border-bottom:1px solid #ccc}
table.scratchnet{border-collapse:collapse;margin:6px 0 12px;font-size:13px;color:#1d1d1d}
table.scratchnet td,table.scratchnet th{border:1px solid #bbb;padding:3px 7px;text-align:right;vertical-align:top}
table.scratchnet th{background:#eef1f5}
table.scratchnet td:first-child,table.scratchnet th:first-child{text-align:left}
table.scratchnet tr.best td{background:#fff6d6}
p.conclusion{background:#f2f6fa;padding:8px 12px;border-left:4px solid #3a7}
p.warn{background:#fff3f0;padding:6px 10px;border-left:4px solid #c63}
div.answer{background:#f7faf7;border:1px solid #9c9;padding:8px 14px;margin-bottom:10px}
code{background:#f1f1f1;padding:0 3px}
</style>"""


def esc(x) -> str:
    return html.escape(str(x))


def table(headers, rows, row_classes=None) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{(row_classes or {}).get(i, "")}">' + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows))
    return f'<table class="scratchnet"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def pm(mean, sd, digits=3) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def study_anchor(s: dict) -> str:
    return f"{s['family']}-{s['study']}"


# ----------------------------------------------------------------------------- the answer

def answer_section(doc: dict, family_titles: dict) -> str:
    runs = [r for v in doc["variants"] for r in v["runs"]]
    by_model = {r["model"]: r for r in runs}
    passed = sum(1 for r in by_model.values() if r["passed"])
    worst = max((r["max_abs_diff"] for r in by_model.values()), default=float("nan"))
    twin = [r["max_abs_diff_float64"] for r in by_model.values() if r.get("max_abs_diff_float64") is not None]
    verdict = (f"<b>{passed} of {len(by_model)} trained models match Keras</b> on their whole test "
               f"split (same argmax on every item, |Δp| within 1e-5 + 1e-5·|p|, and the float64 twin within 1e-9); worst max|Δp| {worst:.1e}"
               + (f"; worst against the float64 twin {max(twin):.1e}" if twin else "") + ".")
    rounding = sorted(m for m, r in by_model.items() if r.get("keras_rounding_only"))
    if rounding:
        verdict += (f" {len(rounding)} of them ({esc(', '.join(rounding))}) pass on the float64 twin "
                    "alone: there float32 Keras itself is further than 1e-5 + 1e-5·|p| from its own "
                    "float64 maths (worst "
                    f"{max(by_model[m]['keras_float32_error'] for m in rounding):.1e}), while scratch "
                    "equals that maths to 1e-9; no float64 implementation can be closer to float32 Keras.")
    cov = doc["coverage"]
    incomplete = {f: c for f, c in cov.items() if c["runs_verified"] < c["runs_planned"]}
    coverage = ", ".join(f"{f} {c['runs_verified']}/{c['runs_planned']}" for f, c in cov.items())
    parts = [f"<p>{verdict}</p>",
             f"<p>Runs verified of planned (configurations × seeds): {coverage}."
             + (" <b>Incomplete:</b> the missing runs are not trained yet "
                "(<code>python -m experiments train --profile full</code> resumes the build); "
                "studies say which seeds they cover." if incomplete else "") + "</p>"]
    rows = []
    for fam, sel in doc["selected"].items():
        if not sel:
            rows.append([esc(family_titles.get(fam, fam)), "not trained yet", "", "", ""])
            continue
        rows.append([esc(family_titles.get(fam, fam)), esc(sel["label"]) + f" <small>({esc(sel['variant'])})</small>",
                     f"{_metric_name(sel['validation']['metric'])} {sel['validation']['mean']:.3f}",
                     pm(sel["f1_mean"], sel["f1_std"]) + f" (n={sel['n_runs']})",
                     pm(sel["accuracy_mean"], None)])
    parts.append("<p>Per family, the configuration chosen on validation only (the best mean over "
                 "seeds of the metric its early stopping monitors, at the restored epochs), and "
                 "its test scores:</p>")
    parts.append(table(["family", "selected configuration", "chosen on (validation, mean)",
                        "test macro-F1, mean ± SD over seeds", "test accuracy (mean)"], rows))
    parts.append(speed_summary(doc.get("benchmarks", []), doc.get("training_benchmarks", []),
                               doc.get("environment", {}).get("blas")))
    return '<div class="answer">' + "".join(parts) + "</div>"


DEFAULT_BENCH_INPUTS = "test split"


def _bench_groups(benches: list[dict]) -> list[tuple[tuple[str, str], dict]]:
    """[((family, inputs), {impl: record})], sorted; one group per ratio baseline."""
    groups: dict = {}
    for b in benches:
        groups.setdefault((b["family"], b.get("inputs", DEFAULT_BENCH_INPUTS)), {})[b["impl"]] = b
    return sorted(groups.items())


def _metric_name(metric: str) -> str:
    return {"val_loss": "val loss", "val_accuracy": "val accuracy"}.get(metric, metric)


def ratio(b: dict, keras: dict | None) -> str:
    """time(b) / time(Keras), medians of their rounds (one slow round, common on a shared
    machine, moves a mean of 3-5 rounds by 10-30%); "n/a" without Keras."""
    return f"{b['median'] / keras['median']:.2f}×" if keras else "n/a"


def blas_note(blas: dict | None) -> str:
    """One sentence on the BLAS kernels scratch_layers' matmuls ran on (Keras' oneDNN
    picks its own): the ratios depend on them."""
    if not blas or not blas.get("openblas_core"):
        return ""
    forced = blas.get("OPENBLAS_CORETYPE")
    how = (f"forced by <code>OPENBLAS_CORETYPE={esc(forced)}</code>; an older core than the CPU "
           "supports makes every matmul slower, see the README's <i>Speed</i>" if forced
           else "OpenBLAS's own choice for this CPU")
    return f" NumPy's OpenBLAS ran its <b>{esc(blas['openblas_core'])}</b> kernels ({how})."


def speed_summary(benches: list[dict], train_benches: list[dict] = (), blas: dict | None = None) -> str:
    """A small table of scratch / Keras time ratios: forward pass per input kind, and
    one training step, each for the float64 (default) and float32 scratch paths."""
    groups = [(f"{fam}: forward pass, {esc(inputs)}", by) for (fam, inputs), by in _bench_groups(benches)]
    groups += [(f"{fam}: one training step (train_on_batch)", by)
               for (fam, _), by in _bench_groups(list(train_benches))]
    rows = [[what] + [f"<b>{ratio(by[impl], by['keras'])}</b>" if impl in by else "n/a"
                      for impl in ("scratch", "scratch_float32")]
            for what, by in groups if "keras" in by]
    if not rows:
        return "<p>Speed: no benchmark ran in this session (<code>pytest -m bench</code>).</p>"
    return ("<p>Time of scratch_layers / time of Keras, medians of rounds measured side by "
            "side in this run (pytest-benchmark; <b>below 1 means scratch is faster</b>; details under "
            '<a href="#benchmarks">Benchmarks</a>).' + blas_note(blas) + '</p>'
            + table(["what", "scratch float64 (exact reference)", "scratch float32"], rows))


def toc(doc: dict, family_titles: dict) -> str:
    items = []
    for fam in doc["selected"]:
        subs = "".join(f'<li><a href="#{study_anchor(s)}">{esc(s["title"])}</a></li>'
                       for s in doc["studies"] if s["family"] == fam)
        items.append(f"<li>{esc(family_titles.get(fam, fam))}<ul>{subs}</ul></li>")
    items += ['<li><a href="#selected-models">Selected models: per-class F1, confusion, errors</a></li>',
              '<li><a href="#verification">Verification, run by run</a></li>',
              '<li><a href="#recipes">Recipes and training cost</a></li>',
              '<li><a href="#benchmarks">Benchmarks</a></li>',
              '<li><a href="#backward">Backward pass: gradients and training steps</a></li>',
              '<li><a href="#provenance">Provenance</a></li>']
    return "<p><b>Contents</b></p><ul>" + "".join(items) + "</ul>"


# ----------------------------------------------------------------------------- studies

def _flags(v: dict) -> str:
    names = {"near_untrained": "near-untrained", "collapsed": "collapsed", "overfit": "overfit",
             "cut_short": "cut short", "at_epoch_limit": "at epoch limit"}
    out = []
    for flag, name in names.items():
        k = sum(1 for r in v["runs"] if r["flags"].get(flag))
        if k:
            out.append(f"{name} ×{k}")
    return ", ".join(out) or "–"


def study_section(study: dict, variants: list[dict], family_title: str) -> str:
    ran = [v for v in variants if v["runs"]]
    best = max(ran, key=lambda v: v["f1_mean"]) if ran else None
    rows, classes = [], {}
    for i, v in enumerate(variants):
        if v is best:
            classes[i] = "best"
        per_seed = ", ".join(f"{r['keras_f1']:.3f}" for r in v["runs"]) or "not trained"
        rows.append([
            ("★ " if v is best else "") + esc(v["label"]),
            f"{v['params']:,}" if v.get("params") else "",
            f"{len(v['runs'])}/{len(v['seeds_planned'])}",
            pm(v["f1_mean"], v["f1_std"]), per_seed,
            pm(v["accuracy_mean"], v["accuracy_std"]),
            ", ".join(str(r["best_epoch"]) for r in v["runs"]),
            ", ".join(str(r["epochs"]) for r in v["runs"]),
            "" if v["validation"]["mean"] is None else f"{v['validation']['mean']:.3f}",
            _flags(v)])
    out = [f'<h3 id="{study_anchor(study)}">{esc(family_title)}: {esc(study["title"])}</h3>',
           figures.loss_figure(f"{family_title}: {study['title']}", ran) if ran else "",
           table(["variant", "params", "seeds", "test macro-F1 mean ± SD", "per seed",
                  "test accuracy mean ± SD", "best epoch per seed", "epochs run per seed",
                  f"mean {_metric_name(variants[0]['validation']['metric'])} at restored epoch",
                  "flags"], rows, classes),
           "<p><small>★ highest mean test macro-F1 (marked for reading only; selection uses "
           f"{_metric_name(variants[0]['validation']['metric'])} only).</small></p>"]
    label = {v["variant"]: v["label"] for v in variants}
    crow = [[esc(label[c["a"]]), esc(label[c["b"]]), f"{c['mean_diff']:+.3f}",
             "n/a" if c["ci_low"] is None else f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
             "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}",
             "<b>effect</b>" if c["significant"] else "no"] for c in study["comparisons"]]
    if crow:
        out.append(table(["a", "b", "mean F1 a − b", "95% interval (Welch, over seeds)", "p", "effect?"], crow))
    out.append(f'<p class="conclusion"><b>Conclusion.</b> {esc(study["conclusion"])}</p>')
    return "".join(out)


# ----------------------------------------------------------------------------- selected models

def selected_section(doc: dict, family_titles: dict, examples: dict) -> str:
    out = ['<h2 id="selected-models">Selected models: per-class F1, confusion, errors</h2>',
           "<p>For each family's validation-selected configuration: per-class test F1 (mean over "
           "seeds), the confusion matrix summed over seeds, and the test items the first seed's "
           "model gets wrong with the highest confidence.</p>"]
    for fam, sel in doc["selected"].items():
        if not sel:
            continue
        title = family_titles.get(fam, fam)
        out.append(f"<h3>{esc(title)}: {esc(sel['label'])}</h3>")
        out.append(table(["class"] + list(sel["class_names"]),
                         [["F1"] + [f"{f:.3f}" for f in sel["per_class_f1"]]]))
        out.append(figures.confusion_figure(f"{fam}: {sel['variant']}, summed over {sel['n_runs']} seeds",
                                            sel["confusion"], sel["class_names"]))
        out.append(examples.get(fam, ""))
    return "".join(out)


def misclassified_html(fam: str, sel: dict, x_test, class_names) -> str:
    wrong = sel.get("misclassified") or []
    if not wrong:
        return ""
    idx = [w["index"] for w in wrong]
    caps = [f"true {class_names[w['true']]}\npred {class_names[w['predicted']]} ({w['confidence']:.2f})"
            for w in wrong]
    if getattr(x_test, "ndim", 1) == 4:
        return figures.image_grid(f"{fam}: confidently wrong test images", np.asarray(x_test)[idx], caps)
    rows = [[str(w["index"]), esc(class_names[w["true"]]), esc(class_names[w["predicted"]]),
             f"{w['confidence']:.2f}", esc(str(x_test[w["index"]]))] for w in wrong]
    return table(["test item", "true", "predicted", "confidence", "text"], rows)


# ----------------------------------------------------------------------------- verification

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


# ----------------------------------------------------------------------------- recipes, cost, speed

def recipe_section(doc: dict, family_titles: dict) -> str:
    out = ['<h2 id="recipes">Recipes and training cost</h2>']
    fams = list(doc["selected"])
    rows = []
    for fam in fams:
        vs = [v for v in doc["variants"] if v["family"] == fam]
        recipe = vs[0]["recipe"] if vs else {}
        runs = {r["model"]: r for v in vs for r in v["runs"]}
        secs = sum(r["train_seconds"] for r in runs.values())
        rows.append([esc(family_titles.get(fam, fam)),
                     esc("; ".join(f"{k} {v}" for k, v in recipe.items())),
                     len(runs), sum(r["epochs"] for r in runs.values()), f"{secs / 60:.1f} min"])
    out.append(table(["family", "recipe (Adam, sparse categorical cross-entropy)", "models trained",
                      "epochs run", "training wall time"], rows))
    return "".join(out)


def benchmark_section(benches: list[dict], blas: dict | None = None) -> str:
    out = ['<h2 id="benchmarks">Benchmarks: forward pass over the whole test split</h2>']
    if not benches:
        return out[0] + "<p>No benchmarks ran in this session (select them with <code>-m bench</code>).</p>"
    note = blas_note(blas)
    if note:
        out.append("<p>" + note.strip() + "</p>")
    rows = []
    for (fam, inputs), by in _bench_groups(benches):
        k = by.get("keras")
        for impl, b in sorted(by.items()):
            rows.append([fam, esc(inputs), esc(impl), esc(b["model"]), b["n_items"],
                         f"{b['median']:.3f} s", f"{b['mean']:.3f} s", f"{b['min']:.3f} s",
                         ratio(b, k), b.get("rounds", "")])
    out.append(table(["family", "inputs", "implementation", "model", "items", "median", "mean", "min",
                      "time / Keras, medians (below 1: faster)", "rounds"], rows))
    return "".join(out)


def _blas_cell(blas: dict | None) -> str:
    if not blas or not blas.get("openblas_core"):
        return "unknown (OpenBLAS not found)"
    forced = blas.get("OPENBLAS_CORETYPE")
    return f"OpenBLAS {esc(blas['openblas_core'])}" + (
        f" (forced by OPENBLAS_CORETYPE={esc(forced)})" if forced else " (its own choice)")


def provenance_section(env: dict, doc: dict) -> str:
    v = env["versions"]
    rows = [["Python / TensorFlow / Keras / NumPy",
             " / ".join(v.get(k, "?") for k in ("python", "tensorflow", "keras", "numpy"))],
            ["platform", f"{esc(env['platform'])}, {env['cpus']} CPUs"],
            ["NumPy BLAS kernels", _blas_cell(env.get("blas"))],
            ["profile", env["profile"]], ["git commit", esc(env["git_commit"])],
            ["date (UTC)", env["date"]]]
    seen = set()
    for var in doc["variants"]:
        if var["family"] in seen or not var["runs"]:
            continue
        seen.add(var["family"])
        sizes = " / ".join(f"{k} {n:,}" for k, n in (var["split_sizes"] or {}).items())
        rows.append([f"data: {var['family']}", f"{esc(var['data_source'])}; splits {sizes}"])
    return '<h2 id="provenance">Provenance</h2>' + table(["", ""], rows)
