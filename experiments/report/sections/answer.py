"""The page's opening: the answer in short (verification verdict, what each study found, the
selected configurations, speed) and the table of contents."""
from __future__ import annotations

from ...conclusions import finding, reference_sentence
from ..markup import esc, pm, table
from ..names import config_text, metric_name, study_anchor
from .benchmarks import speed_summary


def margin_text(sel: dict) -> str:
    m = sel.get("margin")
    if not m:
        return "no other configuration to compare"
    unit = "" if m["metric"] == "val_accuracy" else " (val loss)"
    runner = (config_text(sel.get("family", ""), m["runner_up_hyperparameters"])
              if sel.get("family") and m.get("runner_up_hyperparameters") else m["runner_up_label"])
    lead = f"leads the runner-up ({esc(runner)}) by {m['difference']:.4f}{unit}"
    if m.get("one_item"):
        lead += f" ({m['difference'] / m['one_item']:.1f} of one validation item)"
    if m["tie"]:
        return f"<b>a tie</b>: {lead}, {esc(m['why'])}"
    return lead


def verdict_text(doc: dict) -> str:
    runs = [r for v in doc["variants"] for r in v["runs"]]
    by_model = {r["model"]: r for r in runs}
    passed = sum(1 for r in by_model.values() if r["passed"])
    worst = max((r["max_abs_diff"] for r in by_model.values()), default=float("nan"))
    twin = [r["max_abs_diff_float64"] for r in by_model.values() if r.get("max_abs_diff_float64") is not None]
    verdict = (f"<b>{passed} of {len(by_model)} trained models give the same answers in scratch_layers "
               "as in Keras.</b> scratch_layers is this project's own forward pass, written in NumPy. "
               "&ldquo;The same&rdquo; means, on every item of the model's test split: the same predicted "
               "class; probabilities within 1e-5 + 1e-5·|p| of Keras' float32 output; and within 1e-9 of "
               "Keras' <i>float64 twin</i>, that is, the same Keras model with its weights and arithmetic "
               "in float64 (Keras' own maths without float32 rounding). "
               f"Largest probability difference from Keras: {worst:.1e}"
               + (f"; from the float64 twin: {max(twin):.1e}" if twin else "") + ".")
    rounding = sorted(m for m, r in by_model.items() if r.get("keras_rounding_only"))
    if rounding:
        verdict += (f" {len(rounding)} of them pass on the float64 twin alone: there float32 Keras is "
                    "itself further than 1e-5 + 1e-5·|p| from its own float64 maths (worst "
                    f"{max(by_model[m]['keras_float32_error'] for m in rounding):.1e}; named under "
                    '<a href="#verification">Verification</a>).')
    return verdict


def answer_section(doc: dict, family_titles: dict) -> str:
    cov = doc["coverage"]
    incomplete = {f: c for f, c in cov.items() if c["runs_verified"] < c["runs_planned"]}
    coverage = ", ".join(f"{family_titles.get(f, f)} {c['runs_verified']} of {c['runs_planned']}" for f, c in cov.items())
    parts = ["<h2>The answer, in short</h2>", f"<p>{verdict_text(doc)}</p>",
             f"<p>Runs verified of those planned (configurations × seeds): {esc(coverage)}."
             + (" <b>Incomplete:</b> the missing runs are not trained yet "
                "(<code>python -m experiments train --profile full</code> resumes the build); "
                "studies say which seeds they cover." if incomplete else "") + "</p>"]
    items = []
    for st in doc["studies"]:
        vs = [v for v in doc["variants"] if v["family"] == st["family"] and v["study"] == st["study"]]
        items.append(f'<li><a href="#{study_anchor(st)}">{esc(family_titles.get(st["family"], st["family"]))}, '
                     f'{esc(st["title"].lower())}</a>: {esc(finding(st, vs))}</li>')
    parts.append("<p><b>What each study found</b> (test macro-F1, mean over seeds; a difference counts as an "
                 "effect only when its Holm-adjusted p is below 0.05 within the study; in brackets the 95% "
                 "interval of that one comparison):</p><ul>"
                 + "".join(items) + "</ul>")
    refs = doc.get("references") or {}
    rows, sentences = [], []
    for fam, sel in doc["selected"].items():
        title = family_titles.get(fam, fam)
        if not sel:
            rows.append([esc(title), "not trained yet", "", "", ""])
            continue
        r = refs.get(fam) or {}
        ref_cell = "<br>".join(f"{esc(m['name'])} {m['test_macro_f1']:.3f}" for m in r.get("models", [])) or "n/a"
        ci = sel.get("f1_ci95")
        rows.append([esc(title),
                     esc(config_text(fam, sel["hyperparameters"])),
                     f"{metric_name(sel['validation']['metric'])} {sel['validation']['mean']:.3f}; " + margin_text(sel),
                     pm(sel["f1_mean"], sel["f1_std"]) + f" (n={sel['n_runs']})"
                     + (f"<br><small>95% interval {ci[0]:.3f}–{ci[1]:.3f}</small>" if ci else ""),
                     ref_cell])
        sentences.append(reference_sentence(title, sel, r))
    parts.append("<p><b>The selected configurations.</b> Per family, the configuration with the best mean "
                 "over seeds of the metric its early stopping monitors, on the validation split only "
                 "(the test split chooses nothing); a lead smaller than one validation item or than the "
                 "seed SD is called a tie. Beside it, reference baselines on the same splits:</p>")
    parts.append(table(["family", "selected configuration", "chosen on (validation mean) and its margin",
                        "test macro-F1, mean ± SD over seeds", "reference baselines, test macro-F1"], rows))
    sentences = [x for x in sentences if x]
    if sentences:
        parts.append("<ul>" + "".join(f"<li>{esc(x)}</li>" for x in sentences) + "</ul>")
    parts.append(speed_summary(doc.get("benchmarks", []), doc.get("training_benchmarks", []),
                               doc.get("environment", {}).get("blas")))
    return '<div class="answer">' + "".join(parts) + "</div>"


def toc(doc: dict, family_titles: dict) -> str:
    items = ['<li><a href="#design">Design: baselines, what each study varies, seeds, selection</a></li>']
    for fam in doc["selected"]:
        subs = "".join(f'<li><a href="#{study_anchor(s)}">{esc(s["title"])}</a></li>'
                       for s in doc["studies"] if s["family"] == fam)
        items.append(f'<li><a href="#family-{esc(fam)}">{esc(family_titles.get(fam, fam))}</a><ul>{subs}</ul></li>')
    items += ['<li><a href="#selected-models">Selected models: per-class F1, confusion, errors</a></li>',
              '<li><a href="#verification">Verification, run by run</a></li>',
              '<li><a href="#recipes">Recipes and training cost</a></li>',
              '<li><a href="#benchmarks">Benchmarks</a></li>',
              '<li><a href="#backward">Backward pass: gradients and training steps</a></li>',
              '<li><a href="#provenance">Provenance</a></li>',
              '<li><a href="#tests">The test session (pytest-html table, collapsed)</a></li>']
    return "<p><b>Contents</b></p><ul>" + "".join(items) + "</ul>"
