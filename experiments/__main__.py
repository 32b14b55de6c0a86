"""Command line: ``python -m experiments train [--profile full] [--family cnn] [--retrain]``.

Trains (or finds in the cache) every distinct configuration of the selected families,
once per seed of the profile's recipe, seed-major (every configuration gets its first
seed before any gets its second).  It uses the same cache as pytest, so nothing trains
twice, and an interrupted build resumes where it stopped.
"""
from __future__ import annotations

import argparse
import sys
import time

from .families import all_families
from .profiles import PROFILES, resolve_profile
from .training import get_trained


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train or load every study model")
    train.add_argument("--profile", choices=PROFILES, default=None)
    train.add_argument("--family", action="append", help="family name (repeatable); default all")
    train.add_argument("--retrain", action="store_true", help="ignore the cache and train again")
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    families = [f for f in all_families() if not args.family or f.name in args.family]
    since = time.time() if args.retrain else None
    for fam in families:
        for config, seed in fam.runs(profile):
            tm = get_trained(fam, config, profile, seed, retrain_since=since)
            m = tm.meta
            print(f"{tm.entry.path.name}: {'cache hit' if tm.cache_hit else 'trained'}, "
                  f"{m['epochs']} epochs, {m['train_seconds']:.0f}s, best epoch {m['best_epoch']}, "
                  f"best val_loss {m['best_val_loss']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
