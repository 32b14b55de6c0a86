"""The Design section: each family's baseline, what each study varies and holds fixed, the seeds."""
from __future__ import annotations

from ..markup import esc, table
from ..names import config_text, metric_name


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
                   + f". <b>Selection metric:</b> {metric_name(recipe.get('monitor', 'val_loss'))} "
                   "(mean over seeds at the restored epochs).</p>")
        out.append(table(["study", "values (baseline in bold)", "held fixed at the baseline"], rows))
    return "".join(out)
