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
from .stats import mean_interval, pairwise, summarize
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
        "validation": validation_summary(monitor, [_at_best_epoch(r, monitor) for r in mine]),
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


def validation_summary(metric: str, values: list) -> dict:
    """``variant["validation"]``: the monitored metric at each run's restored epoch, its mean
    (what selection ranks) and its SD over seeds (what a selection margin is weighed against)."""
    vals = [float(v) for v in values if v is not None]
    s = summarize(vals)
    return {"metric": metric, "mean": s.mean if vals else None, "std": s.as_dict()["std"], "values": vals}


def _at_best_epoch(run: dict, metric: str) -> float | None:
    """``metric`` of ``run``'s history at the epoch early stopping restored."""
    values, best = run["history"].get(metric), run.get("best_epoch")
    return float(values[best - 1]) if values and best else None


def distinct_configurations(variants: list[dict]) -> list[dict]:
    """The trained variants with one entry per configuration (the baseline appears in
    every study of its family; its first appearance stands for it)."""
    seen: dict[str, dict] = {}
    for v in variants:
        if v["runs"]:
            seen.setdefault(canonical(v["hyperparameters"]), v)
    return list(seen.values())


def selection_margin(best: dict, runner: dict | None, n_val: int | None) -> dict | None:
    """How far the validation-selected configuration leads the runner-up, and whether that
    lead is a *tie*: smaller than one validation item (for accuracy, ``1 / n_val``) or
    smaller than the seed SD of the selected configuration's validation metric."""
    if runner is None or best["validation"]["mean"] is None or runner["validation"]["mean"] is None:
        return None
    metric = best["validation"]["metric"]
    diff = abs(best["validation"]["mean"] - runner["validation"]["mean"])
    one_item = 1.0 / n_val if metric == "val_accuracy" and n_val else None
    sd = best["validation"].get("std")
    reasons = []
    # accuracies are counts / n_val stored in float32: compare in items, not in raw floats
    if one_item is not None and round(diff * n_val, 4) < 1:
        reasons.append(f"less than one validation item (1/{n_val} = {one_item:.4f})")
    if sd is not None and diff < sd:
        reasons.append(f"less than the selected configuration's seed SD ({sd:.4f})")
    return {"runner_up": runner["variant"], "runner_up_label": runner["label"],
            "runner_up_hyperparameters": runner["hyperparameters"], "metric": metric,
            "selected_mean": best["validation"]["mean"], "runner_up_mean": runner["validation"]["mean"],
            "difference": diff, "one_item": one_item, "selected_sd": sd,
            "runner_up_sd": runner["validation"].get("std"),
            "runner_up_f1_mean": runner["f1_mean"], "runner_up_f1_std": runner["f1_std"],
            "tie": bool(reasons), "why": "; ".join(reasons)}


def selected_configuration(variants: list[dict]) -> dict | None:
    """The family's best configuration on validation only (the recipe's early-stopping
    metric, mean over seeds at the restored epochs; see
    :func:`experiments.conclusions.validation_rank`): the test split plays no part.
    ``margin`` says how far it leads the runner-up and whether that is a tie."""
    trained = distinct_configurations(variants)
    if not trained:
        return None
    ranked = sorted(trained, key=validation_rank)
    best = ranked[0]
    n_val = (best.get("split_sizes") or {}).get("val")
    return {"family": best["family"], "variant": best["variant"], "label": best["label"],
            "hyperparameters": best["hyperparameters"], "validation": best["validation"],
            "best_val_loss_mean": best["best_val_loss_mean"], "f1_mean": best["f1_mean"],
            "f1_std": best["f1_std"], "f1_values": [r["keras_f1"] for r in best["runs"]],
            "f1_ci95": mean_interval(r["keras_f1"] for r in best["runs"]),
            "accuracy_mean": best["accuracy_mean"],
            "n_runs": len(best["runs"]), "seeds": best["seeds"], "per_class_f1": best["per_class_f1"],
            "class_names": best["class_names"], "confusion": best["confusion"],
            "misclassified": best.get("misclassified", []),
            "margin": selection_margin(best, ranked[1] if len(ranked) > 1 else None, n_val)}


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


def rebuild(doc: dict) -> dict:
    """``doc`` (a results document, e.g. a committed ``results.json``) with everything
    derived from its variants computed again by the current code: each variant's
    ``validation`` (from its runs' histories), the studies' comparisons and conclusions,
    and ``selected``.  The measurements (runs) are kept as they are; nothing is trained or
    verified.  Used to re-render the report without running the test suite."""
    fams = {f.name: f for f in all_families()}
    variants = doc["variants"]
    for v in variants:
        metric = v["validation"]["metric"]
        v["validation"] = validation_summary(metric, [_at_best_epoch(r, metric) for r in v["runs"]])
        if "label" in v and v["family"] in fams:  # labels come from the study declarations
            study = next((s for s in fams[v["family"]].studies if s.name == v["study"]), None)
            if study is not None:
                v["label"] = study.describe(_as_declared(study, v["value"]))
    studies, selected = [], {}
    for fam_name in dict.fromkeys(v["family"] for v in variants):
        fam = fams[fam_name]
        fam_variants = [v for v in variants if v["family"] == fam_name]
        for study in fam.studies:
            studies.append(study_result(fam, study, [v for v in fam_variants if v["study"] == study.name]))
        selected[fam_name] = selected_configuration(fam_variants)
    return {**doc, "variants": variants, "studies": studies, "selected": selected}


def _as_declared(study, value):
    """A value read back from JSON (lists) as the study declares it (tuples)."""
    for declared in study.values:
        if canonical(declared) == canonical(value):
            return declared
    return value


def _slug(value) -> str:
    from .studies import slug
    return slug(value)


def _mean(values):
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _max_or_none(values):
    vals = [v for v in values if v is not None]
    return float(max(vals)) if vals else None
