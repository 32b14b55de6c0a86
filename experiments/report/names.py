"""How the report names things: a configuration in words, a metric, a study's anchor."""
from __future__ import annotations

from ..families import all_families
from ..results import _as_declared


def config_text(fam: str, hyperparameters: dict) -> str:
    """Every hyperparameter of a configuration in words, e.g. "1 layer, 64 units, bidirectional"."""
    family = next((f for f in all_families() if f.name == fam), None)
    if family is None:
        return ", ".join(f"{k} {v}" for k, v in hyperparameters.items())
    parts = [s.describe(_as_declared(s, hyperparameters[s.param])) for s in family.studies if s.param in hyperparameters]
    seen = {s.param for s in family.studies}
    parts += [f"{k} {v}" for k, v in hyperparameters.items() if k not in seen]
    return ", ".join(parts)


def metric_name(metric: str) -> str:
    return {"val_loss": "val loss", "val_accuracy": "val accuracy"}.get(metric, metric)


def study_anchor(s: dict) -> str:
    return f"{s['family']}-{s['study']}"
