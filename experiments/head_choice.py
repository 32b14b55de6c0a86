"""Each text family's classifier head, chosen on the validation split alone::

    python -m experiments.head_choice [--family lstm] [--seeds 1 2 3 4 5]

For every text family (SimpleRNN, LSTM) and every head of
:data:`experiments.families._text.HEADS`, the family's *baseline* configuration is
trained with the full recipe once per seed (or found in a cache), and scored on the
validation split: macro-F1 of Keras' argmax predictions,
``F1_macro = (1/K) * sum_k 2 P_k R_k / (P_k + R_k)``.  The head with the higher mean
over seeds is the family's choice; the test split is never loaded into a prediction.

Runs of the head a family declares are the committed study runs (``reports/models``),
so nothing trains twice; runs of the other heads are kept in
``.cache/models/head-choice/`` (not committed: they back a decision, not the report).
The numbers land in ``reports/head_choice.json`` (written atomically), which the
report's Design section quotes and ``tests/test_head_choice.py`` holds the families'
declarations to.  Each comparison carries Welch's interval of the difference over seeds
(:func:`experiments.stats.welch`), so a choice inside seed noise reads as one.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import numpy as np

from .cache import ModelCache
from .runs import (PROJECT_ROOT, cache_root, config_key, cpu_description, entry_name,
                   profile_data, train_to)
from .stats import summarize, welch

PROFILE = "full"
RESULT_PATH = PROJECT_ROOT / "reports" / "head_choice.json"
SIDE_CACHE = PROJECT_ROOT / ".cache" / "models" / "head-choice" / PROFILE
COMMAND = "python -m experiments.head_choice"


def text_families() -> list:
    """The declared families whose builder takes a head (the NusaX families)."""
    from .families import all_families
    from .families._text import CELLS
    return [f for f in all_families() if f.name in CELLS]


def baseline_run(family, seed: int, splits, side_cache: Path):
    """The baseline of ``family`` trained with ``seed``: the committed entry when it is
    there, else the side cache's (trained now when missing)."""
    config = family.baseline
    key = config_key(family, config, PROFILE, splits, seed)
    name = entry_name(family, config, key, seed)
    entry = ModelCache(cache_root(PROFILE)).load(name, key)
    if entry is not None:
        return entry
    side = ModelCache(side_cache)
    entry, _ = side.get_or_build(name, key, lambda tmp: train_to(tmp, family, config, PROFILE,
                                                               splits, name, seed))
    return entry


def validation_scores(entry, splits) -> dict:
    """Validation macro-F1 and accuracy of one trained run (its restored weights)."""
    import keras
    from sklearn.metrics import accuracy_score, f1_score

    model = keras.saving.load_model(entry.model_path, compile=False)
    pred = np.asarray(model.predict(splits.x_val, batch_size=256, verbose=0)).argmax(-1)
    labels = list(range(len(splits.class_names)))
    return {"macro_f1": float(f1_score(splits.y_val, pred, labels=labels, average="macro",
                                       zero_division=0)),
            "accuracy": float(accuracy_score(splits.y_val, pred)),
            "epochs": int(entry.meta["epochs"]), "best_epoch": entry.meta.get("best_epoch"),
            "model": entry.path.name}


def choose(family, seeds, side_cache: Path = SIDE_CACHE) -> dict:
    """The head of ``family`` with the higher mean validation macro-F1 over ``seeds``."""
    from .families._text import HEADS, head_of, with_head

    splits = profile_data(family, PROFILE)
    heads = {}
    for head in HEADS:
        fam = with_head(family, head)
        runs = [validation_scores(baseline_run(fam, s, splits, side_cache), splits) for s in seeds]
        f1 = summarize(r["macro_f1"] for r in runs)
        heads[head] = {"description": HEADS[head], "mean": f1.mean, "std": f1.as_dict()["std"],
                       "values": list(f1.values), "runs": runs}
    ranked = sorted(heads, key=lambda h: -heads[h]["mean"])
    best, other = ranked[0], ranked[1]
    diff = welch(best, heads[best]["values"], other, heads[other]["values"])
    return {"family": family.name, "config": family.baseline, "seeds": list(seeds),
            "metric": "validation macro-F1", "heads": heads, "chosen": best,
            "runner_up": other, "difference": diff.as_dict(), "declared": head_of(family, PROFILE)}


def write(doc: dict, path: Path = RESULT_PATH) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=list) + "\n")
    os.replace(tmp, path)


def load(path: Path = RESULT_PATH) -> dict:
    """``reports/head_choice.json`` (an empty dict when it has not been written)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}


def _commit() -> str:
    """The checkout's commit, marked when the tree has uncommitted changes."""
    import subprocess
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=PROJECT_ROOT, text=True, capture_output=True).stdout.strip()
        return sha + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0].rstrip(":"))
    ap.add_argument("--family", action="append", help="text family (repeatable); default both")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    ap.add_argument("-o", "--out", type=Path, default=RESULT_PATH)
    a = ap.parse_args(argv)
    fams = [f for f in text_families() if not a.family or f.name in a.family]
    if not fams:
        ap.error(f"no text family named {a.family}; the text families are "
                 f"{[f.name for f in text_families()]}")
    doc = load(a.out)
    import keras
    for fam in fams:
        res = choose(fam, a.seeds)
        res.update(date=datetime.date.today().isoformat(), commit=_commit(), cpu=cpu_description()["model"],
                   keras=keras.__version__,
                   command=f"{COMMAND} --family {fam.name} --seeds {' '.join(map(str, a.seeds))}")
        doc[fam.name] = res
        d = res["difference"]
        print(f"{fam.name}: " + "; ".join(f"{h} {v['mean']:.3f} ± {v['std']:.3f} "
                                          f"({', '.join(f'{x:.3f}' for x in v['values'])})"
                                          for h, v in res["heads"].items())
              + f" -> {res['chosen']} (+{d['mean_diff']:.3f}, 95% CI [{d['ci_low']:.3f}, "
              f"{d['ci_high']:.3f}]); declared {res['declared']}", flush=True)
        if res["chosen"] != res["declared"]:
            print(f"  {fam.name} declares {res['declared']!r} but validation chose "
                  f"{res['chosen']!r}: change its declaration (experiments/families/"
                  f"{fam.name}.py) and retrain", file=sys.stderr)
    write(doc, a.out)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
