"""The studies: per family its heading with the reference baselines, per study its figures,
variant table, pairwise comparisons and conclusion."""
from __future__ import annotations

from ... import figures
from ...conclusions import reference_sentence, validation_rank
from ..markup import esc, pm, table
from ..names import metric_name, study_anchor


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
    ran = [v for v in variants if v["runs"]]
    chosen = min(ran, key=validation_rank) if ran else None
    metric = metric_name(variants[0]["validation"]["metric"])
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
