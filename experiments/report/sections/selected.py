"""The selected models: per-class F1, confusion matrix and the most confidently wrong test items."""
from __future__ import annotations

import numpy as np

from ... import figures
from ..markup import esc, table
from ..names import config_text


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
