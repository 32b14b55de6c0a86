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
body{color:#1d1d1d;font-size:16px}
a{color:#1a56a8}
#results-table{color:#333}
body{display:flex;flex-direction:column;max-width:100%;overflow-x:hidden;min-width:0}
body>*{order:2;max-width:100%;min-width:0}
#title,body>p:first-of-type{order:0}
div.summary{order:1;display:flex;flex-direction:column}
div.summary__data{display:contents}
div.summary .additional-summary.prefix{order:0}
div.summary .additional-summary.postfix{order:1}
div.summary .additional-summary.summary{order:2}
div.summary__data>h2,div.summary__spacer{display:none}
p.run-count,p.filter,div.summary__reload,div.controls{order:3}
#environment-header,#environment,#results-table,p.filter,div.controls{display:none}
body:has(#sn-show-tests:checked) #results-table{display:table}
body:has(#sn-show-tests:checked) #environment-header,body:has(#sn-show-tests:checked) p.filter{display:block}
body:has(#sn-show-tests:checked) #environment{display:table}
body:has(#sn-show-tests:checked) div.controls{display:flex}
div.scratchnet{max-width:1100px;font-size:16px;line-height:1.5}
div.scratchnet a{color:#1a56a8}
div.scratchnet h2{margin-top:32px;border-bottom:1px solid #ccc}
div.scratchnet p,div.scratchnet li{max-width:95ch}
div.scroll{overflow-x:auto;max-width:100%}
table.scratchnet{border-collapse:collapse;margin:6px 0 12px;font-size:14px;color:#1d1d1d}
table.scratchnet td,table.scratchnet th{border:1px solid #bbb;padding:3px 7px;text-align:left;vertical-align:top}
table.scratchnet td.num,table.scratchnet th.num{text-align:right;font-variant-numeric:tabular-nums}
table.scratchnet th{background:#eef1f5}
table.scratchnet tr.selected td{background:#fff6d6}
p.conclusion{background:#f2f6fa;padding:8px 12px;border-left:4px solid #3a7}
p.warn{background:#fff3f0;padding:6px 10px;border-left:4px solid #c63}
div.answer{background:#f7faf7;border:1px solid #9c9;padding:8px 14px;margin-bottom:10px}
div.tests-toggle{margin:24px 0 8px;padding:8px 12px;border:1px solid #ccc;background:#fafafa;font-size:16px}
code{background:#f1f1f1;padding:0 3px;overflow-wrap:anywhere}
img{height:auto}
@media (max-width:700px){div.scratchnet{font-size:15px} table.scratchnet{font-size:13px}}
</style>"""


def esc(x) -> str:
    return html.escape(str(x))


def _is_number(cell) -> bool:
    """A cell that reads as a number (right-aligned); text stays left-aligned."""
    import re
    text = re.sub(r"<[^>]+>", "", str(cell)).strip()
    return bool(text) and re.fullmatch(r"[★\s]*[-+−]?[\d.,]+(e[-+]?\d+)?\s*(±\s*[\d.]+)?\s*(%|×|s|ms|min)?"
                                       r"(\s*\(n=\d+\))?", text) is not None


def table(headers, rows, row_classes=None) -> str:
    """A table in its own horizontal scroll box; cells that read as numbers are right-aligned."""
    rows = [list(r) for r in rows]
    numeric = [bool(rows) and all(_is_number(r[j]) or str(r[j]) in ("", "n/a", "–") for r in rows if j < len(r))
               and any(_is_number(r[j]) for r in rows if j < len(r)) for j in range(len(headers))]
    head = "".join(f'<th{" class=num" if numeric[j] else ""}>{esc(h)}</th>' for j, h in enumerate(headers))
    body = "".join(
        f'<tr class="{(row_classes or {}).get(i, "")}">'
        + "".join(f'<td{" class=num" if j < len(numeric) and numeric[j] else ""}>{c}</td>' for j, c in enumerate(row))
        + "</tr>" for i, row in enumerate(rows))
    return (f'<div class="scroll"><table class="scratchnet"><thead><tr>{head}</tr></thead>'
            f'<tbody>{body}</tbody></table></div>')


def pm(mean, sd, digits=3) -> str:
    if mean is None or (isinstance(mean, float) and np.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f}" + ("" if sd is None else f" ± {sd:.{digits}f}")


def study_anchor(s: dict) -> str:
    return f"{s['family']}-{s['study']}"


# ----------------------------------------------------------------------------- the answer

def config_text(fam: str, hyperparameters: dict) -> str:
    """Every hyperparameter of a configuration in words, e.g. "1 layer, 64 units, bidirectional"."""
    from .families import all_families
    from .results import _as_declared
    family = next((f for f in all_families() if f.name == fam), None)
    if family is None:
        return ", ".join(f"{k} {v}" for k, v in hyperparameters.items())
    parts = [s.describe(_as_declared(s, hyperparameters[s.param])) for s in family.studies if s.param in hyperparameters]
    seen = {s.param for s in family.studies}
    parts += [f"{k} {v}" for k, v in hyperparameters.items() if k not in seen]
    return ", ".join(parts)


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
    from .conclusions import finding, reference_sentence
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
                     f"{_metric_name(sel['validation']['metric'])} {sel['validation']['mean']:.3f}; " + margin_text(sel),
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


IMPL_NAMES = {"keras": "Keras predict", "scratch": "scratch float64", "scratch_float32": "scratch float32",
              "onnxruntime": "ONNX Runtime"}


def speed_summary(benches: list[dict], train_benches: list[dict] = (), blas: dict | None = None) -> str:
    """A small table of time ratios against Keras: forward pass per input kind, and one
    training step, for the float64 (default) and float32 scratch paths, and ONNX Runtime
    (the exported Keras model) where it ran."""
    groups = [(f"{fam}: forward pass, {esc(inputs)}", by) for (fam, inputs), by in _bench_groups(benches)]
    groups += [(f"{fam}: one training step (train_on_batch)", by)
               for (fam, _), by in _bench_groups(list(train_benches))]
    impls = ["scratch", "scratch_float32"] + (["onnxruntime"] if any("onnxruntime" in by for _, by in groups) else [])
    rows = [[what] + [f"<b>{ratio(by[impl], by['keras'])}</b>" if impl in by else "n/a" for impl in impls]
            for what, by in groups if "keras" in by]
    if not rows:
        return "<p>Speed: no benchmark ran in this session (<code>pytest -m bench</code>).</p>"
    head = ["what", "scratch float64 (exact reference)", "scratch float32"]
    if "onnxruntime" in impls:
        head.append("ONNX Runtime (exported Keras model)")
    return ("<p><b>Speed.</b> Time of each implementation / time of Keras <code>predict</code>, medians of "
            "rounds measured side by side in this run (pytest-benchmark; <b>below 1 means faster than "
            'Keras</b>; details under <a href="#benchmarks">Benchmarks</a>).' + blas_note(blas) + '</p>'
            + table(head, rows))


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


# ----------------------------------------------------------------------------- design

def design_section(doc: dict, families) -> str:
    """What the studies are: each family's baseline exactly, what each study varies and holds
    fixed, that the baseline's runs are shared, the seeds, and selection on validation only."""
    out = ['<h2 id="design">Design</h2>',
           "<p>Each family has one <b>baseline</b> configuration. A <b>study</b> changes one "
           "hyperparameter of that baseline and holds every other at its baseline value, so every study "
           "contains the baseline itself; the baseline is trained once per seed and <b>its runs are shared "
           "by all the family's studies</b> (the same numbers appear in each of its tables). Every "
           "configuration is trained with several <b>seeds</b> (initialisation, batch order, dropout and "
           "augmentation draws), and a variant's score is the mean over its seeds. Comparisons are Welch "
           "t-tests over seeds with Holm-adjusted p-values within each study. The configuration reported "
           "per family is chosen on the <b>validation split only</b>, by the metric early stopping "
           "monitors; the test split is used once, to score.</p>"]
    seeds = doc.get("seeds") or {}
    for fam in families:
        vs = [v for v in doc["variants"] if v["family"] == fam.name]
        recipe = vs[0]["recipe"] if vs else {}
        sd = seeds.get(fam.name) or {}
        rows = []
        for st in fam.studies:
            values = ", ".join(("<b>" + esc(st.describe(v)) + "</b>" if v == fam.baseline[st.param]
                                else esc(st.describe(v))) for v in st.values)
            fixed = config_text(fam.name, {k: v for k, v in fam.baseline.items() if k != st.param})
            rows.append([esc(st.title), values, esc(fixed)])
        head = recipe.get("head") or ""
        extra = "; ".join(f"{k} {v}" for k, v in recipe.items() if k in ("augmentation",))
        out.append(f"<h3>{esc(fam.title)}</h3>")
        out.append(f"<p><b>Baseline:</b> {esc(config_text(fam.name, fam.baseline))}"
                   + (f"; classifier head: {esc(head)}" if head else "") + (f"; {esc(extra)}" if extra else "")
                   + ". <b>Seeds:</b> " + esc(", ".join(map(str, sd.get("seeds", []))))
                   + (f" (baseline {esc(', '.join(map(str, sd['baseline_seeds'])))})"
                      if sd.get("baseline_seeds") and list(sd["baseline_seeds"]) != list(sd.get("seeds", [])) else "")
                   + f". <b>Selection metric:</b> {_metric_name(recipe.get('monitor', 'val_loss'))} "
                   "(mean over seeds at the restored epochs).</p>")
        out.append(table(["study", "values (baseline in bold)", "held fixed at the baseline"], rows))
    return "".join(out)


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


def family_intro(fam: str, title: str, doc: dict) -> str:
    """The family's heading, with its reference baselines (same splits)."""
    from .conclusions import reference_sentence
    refs = (doc.get("references") or {}).get(fam) or {}
    out = [f'<h2 id="family-{esc(fam)}">{esc(title)}: studies</h2>']
    if refs.get("models"):
        rows = [[esc(m["name"]), esc(", ".join(f"{k} {v}" for k, v in m.get("chosen", {}).items())),
                 f"{m['val_macro_f1']:.3f}", f"{m['test_macro_f1']:.3f}", f"{m['test_accuracy']:.3f}"]
                for m in refs["models"]]
        out.append("<p>Reference baselines on the same splits (scikit-learn; settings chosen on the "
                   "validation split):</p>")
        out.append(table(["reference", "chosen on validation", "validation macro-F1", "test macro-F1",
                          "test accuracy"], rows))
        sentence = reference_sentence(title, doc["selected"].get(fam), refs)
        if sentence:
            out.append(f"<p>{esc(sentence)}</p>")
    return "".join(out)


def study_section(study: dict, variants: list[dict], family_title: str, reference: dict | None = None) -> str:
    from .conclusions import validation_rank
    ran = [v for v in variants if v["runs"]]
    chosen = min(ran, key=validation_rank) if ran else None
    metric = _metric_name(variants[0]["validation"]["metric"])
    rows, classes = [], {}
    for i, v in enumerate(variants):
        if v is chosen:
            classes[i] = "selected"
        per_seed = ", ".join(f"{r['keras_f1']:.3f}" for r in v["runs"]) or "not trained"
        val = v["validation"]
        rows.append([
            ("★ " if v is chosen else "") + esc(v["label"]),
            f"{v['params']:,}" if v.get("params") else "",
            f"{len(v['runs'])}/{len(v['seeds_planned'])}",
            "" if val["mean"] is None else pm(val["mean"], val.get("std"), 4 if metric == "val accuracy" else 3),
            pm(v["f1_mean"], v["f1_std"]), per_seed,
            pm(v["accuracy_mean"], v["accuracy_std"]),
            ", ".join(str(r["best_epoch"]) for r in v["runs"]),
            ", ".join(str(r["epochs"]) for r in v["runs"]),
            _flags(v)])
    title = f"{family_title}: {study['title']}"
    out = [f'<h3 id="{study_anchor(study)}">{esc(title)}</h3>',
           f"<p>Varies {esc(study['title'].lower())} ({', '.join(esc(v['label']) for v in variants)}); every "
           "other hyperparameter stays at the family's baseline (see <a href=\"#design\">Design</a>).</p>",
           figures.loss_figure(title, ran, variants[0]["validation"]["metric"]) if ran else "",
           figures.f1_dot_figure(title, ran, chosen["variant"] if chosen else None, reference) if ran else "",
           table(["variant", "params", "seeds", f"{metric} at restored epoch, mean ± SD",
                  "test macro-F1 mean ± SD", "per seed", "test accuracy mean ± SD", "restored epoch per seed",
                  "epochs run per seed", "flags"], rows, classes),
           f"<p><small>★ and the yellow row: the variant this study's validation split selects (best mean "
           f"{metric}); the test columns play no part in choosing it.</small></p>"]
    label = {v["variant"]: v["label"] for v in variants}
    crow = [[esc(label[c["a"]]), esc(label[c["b"]]), f"{c['mean_diff']:+.3f}",
             "n/a" if c["ci_low"] is None else f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]",
             "n/a" if c.get("df") is None else f"{c['df']:.1f}",
             "n/a" if c["p_value"] is None else f"{c['p_value']:.3g}",
             "n/a" if c.get("p_holm") is None else f"{c['p_holm']:.3g}",
             "<b>effect</b>" if c["significant"] else "no"] for c in study["comparisons"]]
    if crow:
        out.append(table(["a", "b", "mean F1 a − b", "95% interval, this comparison alone (Welch, over seeds)",
                          "Welch df", "p", "p, Holm-adjusted in this study", "effect (p Holm < 0.05)?"], crow))
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
        out.append(f"<h3>{esc(title)}: {esc(config_text(fam, sel['hyperparameters']))}</h3>")
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
