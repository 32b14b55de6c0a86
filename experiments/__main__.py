"""Command line: ``python -m experiments train [--profile full] [--family cnn] [--retrain]
[--baseline-only] [--seed N] [--scheduler local:N | tcp://HOST:PORT] [--gpus-per-run G] [--retries R]``.

Trains (or finds in the cache) every distinct configuration of the selected families,
once per seed of the profile's recipe, seed-major (every configuration gets its first
seed before any gets its second).  It uses the same cache as pytest, so nothing trains
twice, and an interrupted build resumes where it stopped.  With ``--scheduler`` every
missing run is one task on a Dask cluster (:mod:`experiments.cluster`); the exit
status is 1 when a run failed (each is named, with its traceback) and 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import sys
import time

from .families import all_families
from .profiles import PROFILES, resolve_profile
from .runs import get_trained
from .studies import canonical


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train or load every study model")
    train.add_argument("--profile", choices=PROFILES, default=None)
    train.add_argument("--family", action="append", help="family name (repeatable); default all")
    train.add_argument("--retrain", action="store_true", help="ignore the cache and train again")
    train.add_argument("--scheduler", default=None, metavar="local:N|tcp://HOST:PORT",
                       help="train on a Dask cluster: local:N starts N single-threaded worker "
                            "processes on 127.0.0.1, an address joins a running scheduler; "
                            "default: in this process")
    train.add_argument("--gpus-per-run", type=float, default=0, metavar="G",
                       help="with --scheduler: each run needs G of the workers' Dask resource "
                            "GPU (workers started with `dask worker ... --resources GPU=1`)")
    train.add_argument("--retries", type=int, default=None, metavar="R",
                       help="with --scheduler local:N: how often a run may lose its worker "
                            "(killed, out of memory) and start again elsewhere (default 2)")
    train.add_argument("--baseline-only", action="store_true",
                       help="only each family's baseline configuration (all its seeds)")
    train.add_argument("--seed", type=int, action="append",
                       help="only this seed (repeatable); default every seed of the recipe")
    args = parser.parse_args(argv)
    profile = resolve_profile(args.profile)
    families = [f for f in all_families() if not args.family or f.name in args.family]
    since = time.time() if args.retrain else None

    def only(fam, config, seed) -> bool:
        return ((not args.baseline_only or canonical(config) == canonical(fam.baseline))
                and (not args.seed or seed in args.seed))
    if args.scheduler:
        return _train_distributed(args, families, profile, since, only)
    if args.gpus_per_run or args.retries is not None:
        parser.error("--gpus-per-run and --retries need --scheduler")
    for fam in families:
        for config, seed in fam.runs(profile):
            if not only(fam, config, seed):
                continue
            tm = get_trained(fam, config, profile, seed, retrain_since=since)
            m = tm.meta
            print(f"{tm.entry.path.name}: {'cache hit' if tm.cache_hit else 'trained'}, "
                  f"{m['epochs']} epochs, {m['train_seconds']:.0f}s, best epoch {m['best_epoch']}, "
                  f"best val_loss {m['best_val_loss']:.4f}", flush=True)
    return 0


def _train_distributed(args, families, profile: str, since: float | None, only) -> int:
    from .cluster.scheduler import DEFAULT_RETRIES, SchedulerError, cluster_client, parse_scheduler
    from .cluster.submit import report_failures, train_on_cluster

    try:
        parse_scheduler(args.scheduler)
    except SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    retries = DEFAULT_RETRIES if args.retries is None else args.retries
    if args.retries is not None and not args.scheduler.startswith("local:"):
        print("[scratchnet] --retries applies to local:N only: a running scheduler uses its own "
              "distributed.scheduler.allowed-failures", file=sys.stderr)
    try:
        with cluster_client(args.scheduler, retries=retries,
                            gpus_per_run=args.gpus_per_run) as client:
            print(f"[scratchnet] cluster {client.scheduler.address}: "
                  f"{len(client.scheduler_info()['workers'])} workers", file=sys.stderr, flush=True)
            result = train_on_cluster(client, families, profile, retrain_since=since,
                                      gpus_per_run=args.gpus_per_run, only=only)
    except SchedulerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("[scratchnet] interrupted: landed entries are in the cache; run the same command "
              "again to train the rest", file=sys.stderr, flush=True)
        return 130
    print(f"[scratchnet] {len(result.landed)} trained, {len(result.cached)} cached, "
          f"{len(result.by_other)} landed by another process, {len(result.failed)} failed",
          flush=True)
    report_failures(result)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
