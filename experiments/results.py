"""The results document (``results.json``): runs grouped into variants, studies, comparisons.

Input is one record per verified *run* (a configuration trained with one seed, see
``tests/test_verify_models.py``).  A study *variant* is a configuration; its numbers
are aggregated over the runs of that configuration (all seeds), and every pair of
variants in a study is compared with :func:`experiments.stats.welch`.  Nothing here
trains or predicts: it only arranges what the tests measured.
"""
from __future__ import annotations

import math

import numpy as np

from .conclusions import conclude, run_flags, validation_rank
from .families import all_families
from .stats import pairwise, summarize
from .studies import Family, canonical

RUN_FIELDS = ("seed", "keras_f1", "scratch_f1", "keras_accuracy", "agreement", "max_abs_diff",
              "max_abs_diff_float64", "n_test", "history", "best_epoch", "best_val_loss", "epochs",
              "train_seconds", "model", "predicted_classes", "per_class_f1", "passed",
              "keras_float32_error", "keras_rounding_only")


def _runs_of(runs: list[dict], family: Family, config: dict) -> list[dict]:
    key = canonical(config)
    return sorted((r for r in runs if r["family"] == family.name and canonical(r["config"]) == key),
                  key=lambda r: r["seed"])


def mean_history(histories: list[dict]) -> dict:
    """Per-epoch mean, min and max over runs, over the runs that reached each epoch
    (early stopping ends runs at different epochs); ``n`` counts them."""
    out: dict = {}
    for metric in ("loss", "val_loss", "accuracy", "val_accuracy"):
        curves = [h[metric] for h in histories if h.get(metric)]
        if not curves:
            continue
        length = max(len(c) for c in curves)
        cols = [[c[e] for c in curves if e < len(c)] for e in range(length)]
        out[metric] = [float(np.mean(c)) for c in cols]
        out[metric + "_min"] = [float(np.min(c)) for c in cols]
        out[metric + "_max"] = [float(np.max(c)) for c in cols]
        out["n"] = [len(c) for c in cols]
    return out


def variant_result(family: Family, study, value, runs: list[dict], profile: str) -> dict:
    """One study variant, aggregated over its seeds (see README, ``results.json``)."""
    config = {**family.baseline, study.param: value}
    mine = _runs_of(runs, family, config)
    f1 = summarize(r["keras_f1"] for r in mine)
    acc = summarize(r["keras_accuracy"] for r in mine)
    first = mine[0] if mine else {}
    monitor = family.recipe[profile].get("monitor", "val_loss")
    n_classes = len(first.get("class_names", []))
    out = {
        "study": study.name, "family": family.name,
        "variant": f"{family.name}-{study.name}-{_slug(value)}", "label": study.describe(value),
        "value": value, "hyperparameters": config, "profile": profile,
        "recipe": {k: v for k, v in family.recipe[profile].items() if k not in ("seeds", "baseline_seeds")},
        "seeds_planned": list(family.seeds(profile, config)), "seeds": [r["seed"] for r in mine],
        "f1_mean": f1.mean, "f1_std": f1.as_dict()["std"],
        "accuracy_mean": acc.mean, "accuracy_std": acc.as_dict()["std"],
        "keras_f1": f1.mean,
        "scratch_f1": summarize(r["scratch_f1"] for r in mine).mean,
        "keras_accuracy": acc.mean,
        "agreement": min((r["agreement"] for r in mine), default=math.nan),
        "max_abs_diff": max((r["max_abs_diff"] for r in mine), default=math.nan),
        "max_abs_diff_float64": _max_or_none(r.get("max_abs_diff_float64") for r in mine),
        "allclose": all(r["allclose"] for r in mine), "passed": all(r["passed"] for r in mine),
        "n_test": first.get("n_test"), "params": first.get("params"),
        "epochs": _mean(r["epochs"] for r in mine), "best_epoch": _mean(r["best_epoch"] for r in mine),
        "best_val_loss_mean": _mean(r["best_val_loss"] for r in mine),
        "validation": {"metric": monitor, "mean": _mean(_at_best_epoch(r, monitor) for r in mine)},
        "train_seconds": float(sum(r["train_seconds"] for r in mine)),
        "history": mean_history([r["history"] for r in mine]),
        "confusion": np.sum([r["confusion"] for r in mine], axis=0).tolist() if mine else [],
        "per_class_f1": np.mean([r["per_class_f1"] for r in mine], axis=0).tolist() if mine else [],
        "class_names": first.get("class_names", []), "model": first.get("model"),
        "seed": first.get("seed"), "data_source": first.get("data_source"),
        "split_sizes": first.get("split_sizes"),
        "runs": [{**{k: r.get(k) for k in RUN_FIELDS}, "flags": run_flags(r, n_classes)} for r in mine],
    }
    return out


def study_result(family: Family, study, variants: list[dict]) -> dict:
    values = {v["variant"]: [r["keras_f1"] for r in v["runs"]] for v in variants}
    comparisons = [c.as_dict() for c in pairwise([v["variant"] for v in variants], values)]
    result = {"family": family.name, "study": study.name, "title": study.title,
              "param": study.param, "variants": [v["variant"] for v in variants],
              "comparisons": comparisons, "also_changes": study.also_changes}
    result["conclusion"] = conclude(result, variants)
    return result


def _at_best_epoch(run: dict, metric: str) -> float | None:
    """``metric`` of ``run``'s history at the epoch early stopping restored."""
    values, best = run["history"].get(metric), run.get("best_epoch")
    return float(values[best - 1]) if values and best else None


def selected_configuration(variants: list[dict]) -> dict | None:
    """The family's best configuration on validation only (the recipe's early-stopping
    metric, mean over seeds at the restored epochs; see
    :func:`experiments.conclusions.validation_rank`): the test split plays no part."""
    trained = [v for v in variants if v["runs"]]
    if not trained:
        return None
    best = min(trained, key=validation_rank)
    return {"variant": best["variant"], "label": best["label"], "hyperparameters": best["hyperparameters"],
            "validation": best["validation"],
            "best_val_loss_mean": best["best_val_loss_mean"], "f1_mean": best["f1_mean"],
            "f1_std": best["f1_std"], "accuracy_mean": best["accuracy_mean"],
            "n_runs": len(best["runs"]), "seeds": best["seeds"], "per_class_f1": best["per_class_f1"],
            "class_names": best["class_names"], "confusion": best["confusion"],
            "misclassified": best.get("misclassified", [])}


def build(runs: list[dict], profile: str) -> dict:
    """``variants``, ``studies``, ``selected`` (per family) and ``coverage`` from run records."""
    variants, studies, selected, coverage = [], [], {}, {}
    for fam in all_families():
        fam_variants = []
        for study in fam.studies:
            vs = [variant_result(fam, study, value, runs, profile) for value in study.values]
            for v in vs:  # the misclassified examples of the first seed, for the report
                first = _runs_of(runs, fam, v["hyperparameters"])
                v["misclassified"] = first[0].get("misclassified", []) if first else []
            fam_variants += vs
            studies.append(study_result(fam, study, vs))
        variants += fam_variants
        selected[fam.name] = selected_configuration(fam_variants)
        planned = sum(len(fam.seeds(profile, c)) for c in fam.configs())
        done = len({r["run"] for r in runs if r["family"] == fam.name})
        coverage[fam.name] = {"runs_planned": planned, "runs_verified": done}
    return {"variants": variants, "studies": studies, "selected": selected, "coverage": coverage}


def _slug(value) -> str:
    from .studies import slug
    return slug(value)


def _mean(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _max_or_none(values):
    vals = [v for v in values if v is not None]
    return float(max(vals)) if vals else None
