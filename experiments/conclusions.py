"""Study conclusions generated from the measured numbers only.

Each sentence is derived from the rows it is given (test macro-F1 and per-epoch
losses), so a conclusion can only say what the numbers show:

* best and worst variant by test macro-F1, and the margins;
* whether the margin exceeds sampling noise, estimated as two standard errors of an
  accuracy ``p`` on ``n`` test items, ``2 * sqrt(p (1 - p) / n)``;
* monotonicity, only for ordered hyperparameters (numbers, or tuples compared by sum);
* overfitting per variant: after the epoch of minimum validation loss, validation
  loss rose while training loss kept falling.
"""
from __future__ import annotations

import math
from typing import Any


def _order_key(value: Any):
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (tuple, list)) and all(isinstance(v, (int, float)) for v in value):
        return sum(value)
    return None  # categorical (pooling type, direction): no order to be monotonic in


def overfitting(history: dict) -> dict | None:
    """Where validation loss starts rising while training loss falls, or None.

    Returns ``{"start_epoch", "best_val", "last_val", "train_at_best", "last_train"}``
    with 1-based epochs: ``start_epoch`` is the first epoch after the val-loss minimum.
    """
    val, train = history.get("val_loss") or [], history.get("loss") or []
    if len(val) < 2 or len(train) != len(val):
        return None
    best = min(range(len(val)), key=val.__getitem__)
    if best == len(val) - 1:
        return None
    if val[-1] > val[best] and train[-1] < train[best]:
        return {"start_epoch": best + 2, "best_val": val[best], "last_val": val[-1],
                "train_at_best": train[best], "last_train": train[-1]}
    return None


def noise_margin(accuracy: float, n: int) -> float:
    return 2 * math.sqrt(max(accuracy * (1 - accuracy), 1e-12) / max(n, 1))


def conclude(title: str, rows: list[dict]) -> str:
    """A paragraph about one study.

    ``rows``: one dict per variant with ``label``, ``value``, ``f1``, ``accuracy``,
    ``n_test``, ``history`` (loss/val_loss per epoch) and ``best_val_loss``.
    """
    if not rows:
        return f"{title}: no variant ran, so there is nothing to conclude."
    ranked = sorted(rows, key=lambda r: -r["f1"])
    best, worst = ranked[0], ranked[-1]
    parts = []
    if len(rows) == 1:
        parts.append(f"Only {best['label']} ran (test macro-F1 {best['f1']:.4f}); no comparison is possible.")
    else:
        second = ranked[1]
        noise = noise_margin(best["accuracy"], best["n_test"])
        parts.append(f"Best test macro-F1: {best['label']} ({best['f1']:.4f}), "
                     f"{best['f1'] - second['f1']:.4f} ahead of {second['label']} ({second['f1']:.4f})"
                     + (f" and {best['f1'] - worst['f1']:.4f} ahead of the worst, {worst['label']} "
                        f"({worst['f1']:.4f})." if len(rows) > 2 else "."))
        if best["f1"] - worst["f1"] < noise:
            parts.append(f"The whole spread is below the sampling noise of this test set "
                         f"(about ±{noise:.3f} at n={best['n_test']}), so this study does not "
                         f"show a reliable effect.")
        elif best["f1"] - second["f1"] < noise:
            parts.append(f"The lead over {second['label']} is within sampling noise "
                         f"(about ±{noise:.3f} at n={best['n_test']}); the gap to the worst variant is not.")
        keys = [_order_key(r["value"]) for r in rows]
        if len(rows) > 2 and all(k is not None for k in keys):
            ordered = [r for _, r in sorted(zip(keys, rows), key=lambda t: t[0])]
            f1s = [r["f1"] for r in ordered]
            caveat = " (though within noise)" if best["f1"] - worst["f1"] < noise else ""
            if all(a < b for a, b in zip(f1s, f1s[1:])):
                parts.append(f"Macro-F1 rises monotonically as the hyperparameter grows{caveat}.")
            elif all(a > b for a, b in zip(f1s, f1s[1:])):
                parts.append(f"Macro-F1 falls monotonically as the hyperparameter grows{caveat}.")
            else:
                peak = ordered[f1s.index(max(f1s))]
                parts.append(f"The effect is not monotonic: macro-F1 peaks at {peak['label']}.")
        by_val = min(rows, key=lambda r: r["best_val_loss"])
        if by_val is best:
            parts.append("The lowest validation loss points to the same variant.")
        else:
            parts.append(f"Validation loss would have picked {by_val['label']} "
                         f"(best val loss {by_val['best_val_loss']:.4f}) instead.")
    over = [(r, overfitting(r["history"])) for r in rows]
    shown = [f"{r['label']} from epoch {o['start_epoch']} (val loss {o['best_val']:.3f} → "
             f"{o['last_val']:.3f} while train loss {o['train_at_best']:.3f} → {o['last_train']:.3f})"
             for r, o in over if o]
    if shown:
        parts.append("Overfitting shows in " + "; ".join(shown) + ".")
    else:
        parts.append("No variant overfits within the epochs run: validation loss never rose "
                     "after its minimum while training loss fell.")
    still_falling = [r for r in rows if r["history"]["val_loss"]
                     and min(r["history"]["val_loss"]) == r["history"]["val_loss"][-1]]
    if still_falling:
        parts.append(f"Validation loss was lowest in the last epoch for {len(still_falling)} of "
                     f"{len(rows)} variants: those runs ended at the epoch limit, not by early stopping.")
    return " ".join(parts)
