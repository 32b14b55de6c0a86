"""The Recipes section: each family's training recipe and what training cost."""
from __future__ import annotations

from ..markup import esc, table


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
