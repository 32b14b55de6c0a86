"""Study conclusions generated from the measured numbers only.

A conclusion is built from the study's variants (per-seed test macro-F1, histories,
parameter counts) and its pairwise comparisons (:mod:`experiments.stats`):

* a difference is called an *effect* only when its Holm-adjusted p (over the study's
  comparisons) is below 0.05; its per-comparison 95% Welch interval is quoted as such,
  and a difference whose interval excludes 0 but whose Holm-adjusted p does not pass is
  named as not surviving the correction;
* a *trend* over an ordered hyperparameter is claimed only when every step between
  neighbouring values is an effect in the same direction;
* runs are flagged, not explained away: *collapsed* (some class is never predicted on
  test), *near-untrained* (at the restored epoch the training loss was still within 10%
  of the chance-level loss ln k: an early-stopping artefact, not a trained model), *overfitting* (validation loss
  ended more than 5% above its minimum while training loss kept falling), *cut short* (early stopping
  ended the run before the end of a decaying learning-rate schedule, so its weights come
  from a high-learning-rate phase, not the annealed end of training: a property of the
  run, not of the hyperparameter) and *at the epoch limit* (the lowest validation loss
  came in the last epoch of the budget);
* the validation split names the variant it would select; the test split never does.
"""
from __future__ import annotations

import math
from typing import Any

NEAR_UNTRAINED = 0.9   # training loss at the restored epoch >= 0.9 ln(k): barely trained
# Validation loss must end this far above its minimum (relative) to count as overfitting:
# a last-epoch wobble of under 1% at the end of an annealed schedule (e.g. 0.822 -> 0.827)
# is noise, not a trend.
OVERFIT_RISE = 0.05


def overfitting(history: dict) -> dict | None:
    """Where validation loss starts rising while training loss falls, or None: the last
    validation loss is more than ``OVERFIT_RISE`` (relative) above the minimum, and the
    last training loss is below the training loss at that minimum.

    Returns ``{"start_epoch", "best_val", "last_val", "train_at_best", "last_train"}``
    with 1-based epochs: ``start_epoch`` is the first epoch after the val-loss minimum.
    """
    val, train = history.get("val_loss") or [], history.get("loss") or []
    if len(val) < 2 or len(train) != len(val):
        return None
    best = min(range(len(val)), key=val.__getitem__)
    if best == len(val) - 1:
        return None
    if val[-1] > val[best] * (1 + OVERFIT_RISE) and train[-1] < train[best]:
        return {"start_epoch": best + 2, "best_val": val[best], "last_val": val[-1],
                "train_at_best": train[best], "last_train": train[-1]}
    return None


def run_flags(run: dict, n_classes: int) -> dict:
    """What went wrong (or notably) in one run; all False for a healthy run."""
    history = run.get("history") or {}
    budget = (run.get("recipe") or {}).get("epochs")
    val, train = history.get("val_loss") or [], history.get("loss") or []
    best = run.get("best_epoch")
    train_at_best = train[best - 1] if best and 0 < best <= len(train) else None
    return {
        "collapsed": bool(n_classes and run.get("predicted_classes", n_classes) < n_classes),
        "near_untrained": bool(train_at_best is not None and n_classes
                               and train_at_best >= NEAR_UNTRAINED * math.log(n_classes)),
        "overfit": overfitting(history) is not None,
        "cut_short": bool(train and budget and len(train) < budget
                          and (run.get("recipe") or {}).get("schedule", "constant") != "constant"),
        "at_epoch_limit": bool(val and budget and len(val) == budget and min(val) == val[-1]),
    }


def _order_key(value: Any):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
        return sum(value)
    return None  # categorical (pooling type, direction): no order to trend in


def _fmt_sd(sd) -> str:
    return "" if sd is None else f" ± {sd:.3f}"


def _p(p) -> str:
    return "n/a" if p is None else (f"{p:.2g}" if p >= 0.001 else f"{p:.1e}")


def _interval(c: dict) -> str:
    return f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}]"


def _runs_flagged(variants: list[dict], flag: str) -> list[str]:
    return [f"{v['label']} seed {r['seed']}" for v in variants for r in v["runs"] if r["flags"][flag]]


def validation_rank(variant: dict) -> tuple:
    """Sort key, best first, for choosing a configuration on validation only: the mean
    over seeds, at each run's restored epoch, of the metric its early stopping
    monitored (``variant["validation"]``: val_accuracy is maximised, val_loss minimised)."""
    val = variant["validation"]
    mean = val["mean"] if val["mean"] is not None else math.inf * (-1 if val["metric"] == "val_accuracy" else 1)
    return (-mean if val["metric"] == "val_accuracy" else mean, variant["variant"])


def validation_criterion(variant: dict) -> str:
    metric = variant["validation"]["metric"]
    return ("highest mean validation accuracy at the restored epoch" if metric == "val_accuracy"
            else "lowest mean validation loss at the restored epoch")


def conclude(study: dict, variants: list[dict]) -> str:
    """A paragraph about one study; ``study`` holds ``title``, ``comparisons`` and
    ``also_changes``; ``variants`` are the aggregated variants in declaration order."""
    label = {v["variant"]: v["label"] for v in variants}
    ran = [v for v in variants if v["runs"]]
    if not ran:
        return f"{study['title']}: no variant is trained yet, so there is nothing to conclude."
    parts = []
    missing = [f"{v['label']} ({len(v['runs'])} of {len(v['seeds_planned'])} seeds)"
               for v in variants if len(v["runs"]) < len(v["seeds_planned"])]
    if missing:
        parts.append("Incomplete: " + ", ".join(missing) + " are trained so far; "
                     "what follows covers only the runs that exist.")
    parts.append("Mean test macro-F1 over seeds: " + "; ".join(
        f"{v['label']} {v['f1_mean']:.3f}{_fmt_sd(v['f1_std'])} (n={len(v['runs'])})" for v in ran) + ".")

    comps = study["comparisons"]
    testable = [c for c in comps if c["ci_low"] is not None]
    effects = [c for c in testable if c["significant"]]
    if not testable:
        parts.append("No interval can be computed: that needs at least two seeds per variant.")
    else:
        k = len(testable)
        adj = (f"over the study's {k} comparisons" if k > 1 else "one comparison, so no adjustment")
        if effects:
            sentences = []
            for c in effects:
                w, l, gap, lo, hi = _oriented(c)
                sentences.append(f"{label[w]} beats {label[l]} by {gap:.3f} ({lo:+.3f} to {hi:+.3f}, "
                                 f"p_holm = {_p(c.get('p_holm', c['p_value']))})")
            parts.append(f"Effects (Holm-adjusted p < 0.05, {adj}; in brackets the 95% Welch interval of "
                         "the gap, for that comparison alone): " + "; ".join(sentences) + ".")
        lost = [c for c in testable if not c["significant"] and c.get("ci_excludes_0")]
        if lost:
            parts.append("Not effects after the Holm adjustment, although the per-comparison interval "
                         "excludes 0: " + "; ".join(
                f"{label[c['a']]} vs {label[c['b']]} ({c['mean_diff']:+.3f}, {_interval(c)}, p = "
                f"{_p(c['p_value'])}, p_holm = {_p(c.get('p_holm'))})" for c in lost) + ".")
        rest = [c for c in testable if not c["significant"] and not c.get("ci_excludes_0")]
        if effects and rest:
            parts.append("Not effects (interval includes 0): " + "; ".join(
                f"{label[c['a']]} vs {label[c['b']]} ({c['mean_diff']:+.3f}, {_interval(c)})" for c in rest) + ".")
        elif not effects:
            widest = max(testable, key=lambda c: abs(c["mean_diff"]))
            parts.append(f"No difference is an effect (Holm, {adj}; largest gap "
                         f"{label[widest['a']]} − {label[widest['b']]} = {widest['mean_diff']:+.3f}, "
                         f"per-comparison 95% interval {_interval(widest)})."
                         + ("" if lost else " Seed-to-seed spread is as large as anything this "
                                            "hyperparameter does here."))
        dfs = [c["df"] for c in testable if c.get("df") is not None]
        n_min = min(min(c["n_a"], c["n_b"]) for c in testable)
        if dfs and (n_min < 3 or min(dfs) < 3):
            parts.append(f"Caveat: the smallest variant has {n_min} seeds (Welch df "
                         f"{min(dfs):.1f}–{max(dfs):.1f}), so each interval is wide and only large "
                         f"differences can be effects.")

    if testable:
        parts += _trend(study, ran, comps, label)

    by_val = min(ran, key=validation_rank)
    by_test = max(ran, key=lambda v: v["f1_mean"])
    parts.append(f"Validation ({validation_criterion(by_val)}) selects {by_val['label']}"
                 + (", which also has the best mean test macro-F1." if by_val is by_test else
                    f"; the best mean test macro-F1 belongs to {by_test['label']}, which validation "
                    f"would not have picked."))

    for flag, text in (
            ("near_untrained", "Early-stopping artefacts (restored from an epoch whose training "
                               "loss was near chance level: not a trained model)"),
            ("collapsed", "Collapsed runs (some class is never predicted on test)")):
        hits = _runs_flagged(ran, flag)
        if hits:
            parts.append(f"{text}: {', '.join(hits)}.")
    cut = [(v, r) for v in ran for r in v["runs"] if r["flags"].get("cut_short")]
    if cut:
        parts.append("Cut short by early stopping before the learning-rate schedule annealed "
                     "(a property of the run, not of the hyperparameter; its variant's spread "
                     "includes it): " + "; ".join(
                         f"{v['label']} seed {r['seed']} (stopped after epoch {r['epochs']} of "
                         f"{(v.get('recipe') or {}).get('epochs')}, restored epoch {r['best_epoch']}, test macro-F1 "
                         f"{r['keras_f1']:.3f})" for v, r in cut) + ".")
    n_runs = sum(len(v["runs"]) for v in ran)
    over = _runs_flagged(ran, "overfit")
    if over:
        restored = ("validation accuracy" if ran[0]["validation"]["metric"] == "val_accuracy"
                    else "validation loss")
        parts.append(f"Validation loss ended more than {OVERFIT_RISE:.0%} above its minimum while "
                     f"training loss kept falling in {len(over)} of {n_runs} runs (overfitting; the "
                     f"weights kept are those of the epoch with the best {restored}).")
    limit = _runs_flagged(ran, "at_epoch_limit")
    if limit:
        parts.append(f"{len(limit)} of {n_runs} runs had their lowest validation loss in the last "
                     f"epoch of the budget.")
    if study.get("also_changes"):
        parts.append(study["also_changes"])
    params = [f"{v['label']} {v['params']:,}" for v in ran if v.get("params")]
    if len({v.get('params') for v in ran}) > 1:
        parts.append("Parameters: " + "; ".join(params) + ".")
    return " ".join(parts)


def _trend(study: dict, ran: list[dict], comps: list[dict], label: dict) -> list[str]:
    """A trend sentence for an ordered hyperparameter with 3+ values, backed by effects."""
    keys = [_order_key(v["value"]) for v in ran]
    if len(ran) < 3 or any(k is None for k in keys):
        return []
    ordered = [v["variant"] for _, v in sorted(zip(keys, ran), key=lambda t: t[0])]
    by_pair = {(c["a"], c["b"]): c for c in comps}

    def diff(lo, hi):  # mean(hi) - mean(lo), with significance
        c = by_pair.get((hi, lo)) or by_pair.get((lo, hi))
        sign = 1 if (hi, lo) in by_pair else -1
        return sign * c["mean_diff"], bool(c["significant"])

    steps = [diff(a, b) for a, b in zip(ordered, ordered[1:])]
    if all(sig for _, sig in steps) and (all(d > 0 for d, _ in steps) or all(d < 0 for d, _ in steps)):
        way = "rises" if steps[0][0] > 0 else "falls"
        return [f"Macro-F1 {way} at every step from {label[ordered[0]]} to {label[ordered[-1]]}, "
                f"and every step is an effect: a trend."]
    end_d, end_sig = diff(ordered[0], ordered[-1])
    if end_sig:
        return [f"{label[ordered[-1] if end_d > 0 else ordered[0]]} beats "
                f"{label[ordered[0] if end_d > 0 else ordered[-1]]}, but not every step between "
                f"neighbouring values is an effect, so this is no evidence of a steady trend."]
    return ["No trend is claimed: neither the steps nor the extremes differ beyond seed noise."]


def _oriented(c: dict) -> tuple[str, str, float, float, float]:
    """(winner, loser, gap, interval low, interval high) with the gap positive."""
    if c["mean_diff"] >= 0:
        return c["a"], c["b"], c["mean_diff"], c["ci_low"], c["ci_high"]
    return c["b"], c["a"], -c["mean_diff"], -c["ci_high"], -c["ci_low"]


def finding(study: dict, variants: list[dict]) -> str:
    """One short line for the first screen: the study's effects (Holm) or that there are none."""
    label = {v["variant"]: v["label"] for v in variants}
    testable = [c for c in study["comparisons"] if c["ci_low"] is not None]
    if not [v for v in variants if v["runs"]]:
        return "not trained yet."
    if not testable:
        return "no interval yet (fewer than two seeds per variant)."
    effects = sorted((c for c in testable if c["significant"]), key=lambda c: -abs(c["mean_diff"]))
    if effects:
        parts = []
        for c in effects:
            w, l, gap, lo, hi = _oriented(c)
            parts.append(f"{label[w]} beats {label[l]} by {gap:.3f} ({lo:+.3f} to {hi:+.3f})")
        return "; ".join(parts) + f" (Holm over {len(testable)} comparison{'s' if len(testable) != 1 else ''})."
    widest = max(testable, key=lambda c: abs(c["mean_diff"]))
    w, l, gap, lo, hi = _oriented(widest)
    return (f"no effect: the largest gap, {label[w]} over {label[l]}, is {gap:.3f} "
            f"(per-comparison 95% interval {lo:+.3f} to {hi:+.3f}), "
            + ("which does not survive the Holm adjustment." if widest.get("ci_excludes_0") else "within seed noise."))


def reference_sentence(family_title: str, selected: dict | None, refs: dict | None) -> str:
    """How the family's validation-selected model compares with the reference baselines on
    the same test split; the reference that validation would pick is the one compared."""
    models = (refs or {}).get("models") or []
    if not selected or not models:
        return ""
    best = max(models, key=lambda m: m["val_macro_f1"])
    maj = next((m for m in models if m["name"] == "majority class"), None)
    f1, ci = selected["f1_mean"], selected.get("f1_ci95")
    x = best["test_macro_f1"]
    if ci:
        where = ("above the whole 95% interval of the selected model's mean" if x > ci[1] else
                 "below the whole 95% interval of the selected model's mean" if x < ci[0] else
                 "inside the 95% interval of the selected model's mean: no clear difference")
        ci_text = f", 95% interval over {selected['n_runs']} seeds {ci[0]:.3f}–{ci[1]:.3f}"
    else:
        where, ci_text = ("higher" if x > f1 else "lower"), ""
    verdict = ("The reference scores better than the selected model." if ci and x > ci[1] else
               "The selected model scores better than the reference." if ci and x < ci[0] else "")
    return (f"{family_title}: the selected model's mean test macro-F1 is {f1:.3f}{ci_text}. "
            f"{best['name'][:1].upper() + best['name'][1:]} (chosen on validation) scores {x:.3f} on the same "
            f"test split, {where}. "
            + (f"Always predicting the majority class scores {maj['test_macro_f1']:.3f}. " if maj else "")
            + verdict).strip()
