"""The client side of a cluster build: every missing run submitted as one task, results collected.

The client holds each submitted run's cache lock until its result lands (or fails), waits
for runs another process holds, and reports failures with their tracebacks.
"""
from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from typing import Callable, Iterable

from ..cache import ModelCache
from ..runs import cache_root
from ..studies import Family
from . import worker
from .landing import land
from .plan import ClusterResult, is_cached, plan
from .progress import Progress


def _lock(cache: ModelCache, name: str):
    from filelock import FileLock
    cache.root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache.root / f"{name}.lock"))


def train_on_cluster(client, families: Iterable[Family], profile: str, *,
                     retrain_since: float | None = None, gpus_per_run: float = 0,
                     only: Callable[[Family, dict, int], bool] | None = None,
                     progress: bool = True, out=None,
                     on_landed: Callable[[str], None] | None = None) -> ClusterResult:
    """Train every missing run of ``families`` on ``client``'s cluster into the cache.

    ``retrain_since``: entries created before it count as missing (``--retrain``);
    ``only(family, config, seed)`` narrows the runs; ``on_landed(name)`` is called
    after each entry lands.  Returns what happened; ``KeyboardInterrupt`` cancels the
    runs in flight, keeps the landed entries and propagates."""
    from distributed import wait
    from filelock import Timeout as FileLockTimeout

    out = out or sys.stdout
    result = ClusterResult()
    missing, cached, splits_of = plan(families, profile, retrain_since, only)
    result.cached = [r.name for r in cached]
    cache = ModelCache(cache_root(profile))
    if not missing:
        print(f"[scratchnet] {len(cached)} runs cached, nothing to submit", file=out, flush=True)
        return result

    # a run another process is training holds its lock: wait for that one rather than train it
    locks, deferred, ready = {}, [], []
    for run in missing:
        lock = _lock(cache, run.name)
        try:
            lock.acquire(timeout=0)
        except FileLockTimeout:  # held by another trainer
            deferred.append(run)
            continue
        locks[run.name] = lock
        ready.append(run)

    data = {}
    pending: dict = {}
    bar = Progress(len(missing), progress, out)
    try:
        rounds = [ready, deferred]
        for i, batch in enumerate(rounds):
            if i == 1:  # runs other processes held: wait for their lock, take what they landed
                batch = []
                for run in deferred:
                    lock = _lock(cache, run.name)
                    lock.acquire()
                    locks[run.name] = lock
                    if is_cached(cache, run, retrain_since):
                        result.by_other.append(run.name)
                        lock.release()
                        del locks[run.name]
                        bar.line(f"{run.name}: landed by another process")
                    else:
                        batch.append(run)
            if not batch:
                continue
            for fam_name in {r.family.name for r in batch} - set(data):
                # the test split stays on the client: training never reads it
                s = splits_of[fam_name]
                s = dataclasses.replace(s, x_test=s.x_test[:0], y_test=s.y_test[:0])
                data[fam_name] = client.scatter(s, broadcast=True, hash=False)
            faults = worker.FAULTS
            for run in batch:
                fut = client.submit(worker.train_task, run.family.name, run.config, profile, run.seed,
                                    data[run.family.name], run.key, run.name, faults,
                                    key=f"train-{run.name}-{time.time_ns()}", pure=False,
                                    resources={"GPU": gpus_per_run} if gpus_per_run else None,
                                    retries=0)
                pending[fut] = run
                result.submitted.append(run.name)
            _collect(client, pending, cache, locks, result, bar, retrain_since, on_landed, wait)
    except BaseException:
        if pending:
            client.cancel(list(pending))
            bar.line(f"[scratchnet] interrupted: {len(pending)} runs in flight cancelled; "
                     f"{len(result.landed)} landed entries kept", step=False)
        raise
    finally:
        bar.close()
        for lock in locks.values():
            lock.release()
        for fut in data.values():
            fut.release()
    return result


def _collect(client, pending: dict, cache: ModelCache, locks: dict, result: ClusterResult,
             bar: Progress, retrain_since, on_landed, wait) -> None:
    while pending:
        try:
            done, _ = wait(list(pending), timeout=2, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = ()
        for fut in done:
            run = pending.pop(fut)
            if fut.status == "finished":
                land(fut.result(), run, cache, locks, result, bar, retrain_since)
                fut.release()
                if on_landed is not None:
                    on_landed(run.name)
            else:
                if fut.status == "cancelled":  # by someone else (another client, the cluster)
                    exc, tb = RuntimeError(f"{run.name}: the task was cancelled"), None
                else:
                    exc, tb = fut.exception(), fut.traceback()
                text = "".join(traceback.format_exception(type(exc), exc, tb))
                result.failed[run.name] = text
                fut.release()
                locks.pop(run.name).release()
                bar.line(f"{run.name}: FAILED ({type(exc).__name__}: {exc})")
        if pending:
            processing = client.processing()
            keys = {f.key for f in pending}
            running = sum(1 for ks in processing.values() for k in ks if k in keys)
            bar.status(running, len(result.failed))


def report_failures(result: ClusterResult, stream=None) -> None:
    stream = stream or sys.stderr
    for name, text in result.failed.items():
        print(f"[scratchnet] run {name} failed:\n{text}", file=stream, flush=True)
    if result.failed:
        print(f"[scratchnet] {len(result.failed)} run(s) failed: {', '.join(result.failed)}",
              file=stream, flush=True)
