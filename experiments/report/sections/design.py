"""The Design section: each family's baseline, what each study varies and holds fixed, the seeds."""
from __future__ import annotations

from ..markup import esc, pm, table
from ..names import config_text, metric_name


def head_evidence(choice: dict | None, built: str = "") -> str:
    """Why a text family has its head: the heads' mean ± SD validation macro-F1 of the
    baseline over seeds (``reports/head_choice.json``, :mod:`experiments.head_choice`);
    a warning when the runs shown were ``built`` with another head than the chosen one."""
    if not choice:
        return ""
    heads = sorted(choice["heads"].items(), key=lambda kv: -kv[1]["mean"])
    names = {"final_state": "final state", "pooling": "masked average pooling"}
    d = choice["difference"]
    seeds = choice["seeds"]
    ci = (f", 95% interval {d['ci_low']:+.3f} to {d['ci_high']:+.3f}" if d.get("ci_low") is not None else "")
    chosen = choice["heads"][choice["chosen"]]["description"]
    warn = "" if not built or built == chosen else (
        f" <b>The runs shown were trained with another head than the one validation chose "
        f"({esc(names.get(choice['chosen'], choice['chosen']))}).</b>")
    return (f" (chosen on the validation split alone: baseline validation macro-F1 over seeds "
            f"{seeds[0]}–{seeds[-1]}, "
            + " vs ".join(f"{esc(names.get(h, h))} {pm(v['mean'], v['std'])}" for h, v in heads)
            + f"; difference {d['mean_diff']:+.3f}{ci})" + warn)


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
                   + head_evidence((doc.get("head_choice") or {}).get(fam.name), head)
                   + ". <b>Seeds:</b> " + esc(", ".join(map(str, sd.get("seeds", []))))
                   + (f" (baseline {esc(', '.join(map(str, sd['baseline_seeds'])))})"
                      if sd.get("baseline_seeds") and list(sd["baseline_seeds"]) != list(sd.get("seeds", [])) else "")
                   + f". <b>Selection metric:</b> {metric_name(recipe.get('monitor', 'val_loss'))} "
                   "(mean over seeds at the restored epochs).</p>")
        out.append(table(["study", "values (baseline in bold)", "held fixed at the baseline"], rows))
    return "".join(out)
