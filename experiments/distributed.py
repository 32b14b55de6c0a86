"""Train study runs on a Dask cluster: one task per (configuration, seed), the same cache.

``python -m experiments train --scheduler local:N`` starts a ``LocalCluster`` of N
single-threaded worker processes on 127.0.0.1 (no dashboard); ``--scheduler
tcp://HOST:PORT`` joins a running one (``dask scheduler`` / ``dask worker``).  pytest
takes the same option and trains every missing run of the selected families on the
cluster before the tests run.

* The client plans as the in-process path does (same keys, same entry names) and
  submits only the runs missing from its cache; cached runs are never submitted.
* A task runs :func:`experiments.training.train_to`, the in-process training code,
  in a temporary folder on the worker, and returns the entry's files (the model's
  bytes and its metadata).  The client checks the SHA-256 and writes the entry
  through :meth:`ModelCache.get_or_build` (temporary folder, atomic rename); workers
  never write into the client's cache and need no shared filesystem.
* The client loads each family's arrays once and scatters them to every worker
  (``broadcast=True``), so workers need no copy of the datasets and the data
  fingerprint in every key is the client's.  The worker recomputes the key from the
  data it received and its own code; a worker whose code or recipe differs fails
  the task instead of training something else under the client's key.
* TensorFlow on a worker runs on as many intra-op threads as the worker has
  (``--nthreads``), set before the worker's first op.
* While its run is out on the cluster the client holds the run's cache lock, as an
  in-process trainer does while it trains, so a second client or an in-process
  ``get_trained`` waits for the entry instead of training it again; a run whose lock
  another process holds is not submitted but waited for, and submitted only if that
  process did not land it.
* A worker that dies mid-run (killed, out of memory) is replaced by its nanny and the
  scheduler runs the task again elsewhere, up to ``retries`` times
  (``distributed.scheduler.allowed-failures``).  A task that raises is reported with
  its traceback; the other runs still land.  Ctrl-C cancels the runs in flight and
  keeps every entry that has landed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import sys
import tempfile
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .cache import MODEL_FILE, ModelCache
from .studies import Family
from .training import (cache_root, config_key, entry_name, profile_data, set_tf_threads,
                       train_to)

DEFAULT_RETRIES = 2
SCHEDULER_HELP = ("train on a Dask cluster: local:N starts N single-threaded worker processes "
                  "on 127.0.0.1, tcp://HOST:PORT joins a running scheduler; default: in-process")

# Test-only fault injection: tests set this to a dict, the CLI and pytest never do.
# {"dir": folder for markers, "kill_once": [...], "fail": [...], "stall": [...]} (entry
# names): a listed run's first attempt kills its worker process (SIGKILL, as the OOM
# killer would); every attempt raises; or sleeps ``stall_seconds`` and then raises.
# Each attempt appends a line to ``dir/<name>.attempts``.  The dict travels to the
# worker as a task argument.
FAULTS: dict | None = None

# A worker process trains one run at a time, on all its threads (TensorFlow's intra-op
# pool is sized to the worker's --nthreads); a worker with several threads queues its
# other runs here rather than oversubscribe its cores.
_TRAIN_LOCK = threading.Lock()


class SchedulerError(ValueError):
    """``--scheduler`` is not ``local:N`` or a scheduler address."""


def parse_scheduler(spec: str) -> tuple[str, int | str]:
    """``("local", N)`` for ``local:N``, ``("address", spec)`` for ``tcp://HOST:PORT``."""
    spec = (spec or "").strip()
    if spec.startswith("local:"):
        try:
            n = int(spec[len("local:"):])
        except ValueError:
            n = 0
        if n < 1:
            raise SchedulerError(f"--scheduler {spec!r}: local:N needs a worker count N >= 1")
        return "local", n
    if "://" in spec or (":" in spec and spec.rsplit(":", 1)[1].isdigit()):
        return "address", spec
    raise SchedulerError(f"--scheduler {spec!r}: expected local:N (N worker processes on this "
                         "machine) or a scheduler address such as tcp://HOST:8786")


@contextmanager
def cluster_client(spec: str, retries: int = DEFAULT_RETRIES, gpus_per_run: float = 0):
    """A ``distributed.Client`` for ``spec``; a local cluster is started here and closed
    (with its worker processes) on exit, whatever happens inside."""
    import dask
    from distributed import Client, LocalCluster

    kind, arg = parse_scheduler(spec)
    if kind == "address":
        with Client(arg, timeout="30s") as client:
            yield client
        return
    if gpus_per_run:
        raise SchedulerError("--gpus-per-run needs workers that declare a GPU resource "
                             "(`dask worker ... --resources GPU=1`); a local:N cluster has none")
    # allowed-failures: how often a task may lose its worker before it fails for good;
    # the local scheduler runs in this process, so this config is the one it reads.
    # worker-saturation 1.0: a worker holds only the runs it executes, so a dying worker
    # takes only those with it (queued ones would count a failed attempt too)
    with dask.config.set({"distributed.scheduler.allowed-failures": retries,
                          "distributed.scheduler.worker-saturation": 1.0}):
        with LocalCluster(n_workers=arg, threads_per_worker=1, processes=True,
                          host="127.0.0.1", dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster) as client:
            yield client


@dataclass(frozen=True)
class PlannedRun:
    family: Family
    config: dict
    seed: int
    key: str
    name: str


@dataclass
class ClusterResult:
    """What a call of :func:`train_on_cluster` did, by entry name."""
    cached: list[str] = field(default_factory=list)      # found in the cache: not submitted
    submitted: list[str] = field(default_factory=list)   # sent to the cluster
    landed: list[str] = field(default_factory=list)      # written into the cache from a task
    by_other: list[str] = field(default_factory=list)    # landed by another process meanwhile
    failed: dict[str, str] = field(default_factory=dict)  # name -> traceback
    records: dict[str, dict] = field(default_factory=dict)  # name -> worker, host, seconds, ...

    @property
    def ok(self) -> bool:
        return not self.failed


# ----------------------------------------------------------------------------- worker side

def _inject_fault(faults: dict | None, name: str) -> None:
    if not faults or not faults.get("dir"):
        return
    folder = Path(faults["dir"])
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.attempts", "a") as f:
        f.write(f"{os.getpid()}\n")
    if name in faults.get("fail", ()):
        raise RuntimeError(f"injected failure in {name} (test fault hook)")
    if name in faults.get("stall", ()):  # in flight for a while, then gives up
        time.sleep(faults.get("stall_seconds", 5))
        raise RuntimeError(f"injected stall in {name} ended (test fault hook)")
    if name in faults.get("kill_once", ()):
        marker = folder / f"{name}.killed"
        if not marker.exists():
            marker.write_text(str(os.getpid()))
            import signal
            os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-run, as if OOM-killed


def train_task(family_name: str, config: dict, profile: str, seed: int, splits, key: str,
               name: str, faults: dict | None = None) -> dict:
    """One (configuration, seed) on a worker: the in-process training code in a temporary
    folder; returns the entry's files (model bytes, metadata) and where it ran."""
    from distributed import get_worker

    worker = get_worker()
    with _TRAIN_LOCK:
        threads = set_tf_threads(worker.state.nthreads)
        _inject_fault(faults, name)
        return _train_locked(family_name, config, profile, seed, splits, key, name, worker,
                             threads)


def _train_locked(family_name, config, profile, seed, splits, key, name, worker, threads):
    from .families import family

    fam = family(family_name)
    own_key = config_key(fam, config, profile, splits, seed)
    if own_key != key:
        raise RuntimeError(f"{name}: this worker's code computes key {own_key} for the run the "
                           f"client keys {key}; the worker runs another version of the "
                           "repository (recipe, family or format) than the client")
    with tempfile.TemporaryDirectory(prefix="scratchnet-run-") as tmp:
        meta = train_to(Path(tmp), fam, config, profile, splits, name, seed, progress=False)
        model = (Path(tmp) / MODEL_FILE).read_bytes()
    return {"meta": meta, "model": model, "model_sha256": hashlib.sha256(model).hexdigest(),
            "worker": worker.address, "host": socket.gethostname(), "pid": os.getpid(),
            "threads": threads}


# ----------------------------------------------------------------------------- client side

def plan(families: Iterable[Family], profile: str, retrain_since: float | None = None,
         only: Callable[[Family, dict, int], bool] | None = None):
    """``(missing, cached, splits)``: the runs to train, the runs the cache already holds
    (same keys and entry names as in-process), and each family's data."""
    missing, cached, splits_of = [], [], {}
    for fam in families:
        runs = [(c, s) for c, s in fam.runs(profile) if only is None or only(fam, c, s)]
        if not runs:
            continue
        splits = splits_of[fam.name] = profile_data(fam, profile)
        cache = ModelCache(cache_root(profile))
        for config, seed in runs:
            key = config_key(fam, config, profile, splits, seed)
            run = PlannedRun(fam, config, seed, key, entry_name(fam, config, key, seed))
            (cached if _is_cached(cache, run, retrain_since) else missing).append(run)
    return missing, cached, splits_of


def _is_cached(cache: ModelCache, run: PlannedRun, retrain_since: float | None) -> bool:
    from .cache import CorruptEntry
    try:
        entry = cache.load(run.name, run.key)
    except CorruptEntry:
        return False  # rebuilt, as get_or_build would
    return entry is not None and not (retrain_since and entry.meta.get("created", 0) < retrain_since)


def _lock(cache: ModelCache, name: str):
    from filelock import FileLock
    cache.root.mkdir(parents=True, exist_ok=True)
    return FileLock(str(cache.root / f"{name}.lock"))


class _Progress:
    """A bar over runs on stderr (done/total, running, failed, elapsed, ETA) and one line
    per finished run on stdout."""

    def __init__(self, total: int, enabled: bool, out):
        self.out, self.bar = out, None
        if enabled and total:
            from tqdm import tqdm
            self.bar = tqdm(total=total, unit="run", desc="[scratchnet] runs", file=sys.stderr,
                            dynamic_ncols=True, mininterval=1.0)

    def status(self, running: int, failed: int) -> None:
        text = f"running {running}, failed {failed}"
        if self.bar is not None and text != getattr(self, "_last", None):
            self._last = text
            self.bar.set_postfix_str(text, refresh=True)

    def line(self, text: str, step: bool = True) -> None:
        if self.bar is not None:
            self.bar.clear()
        print(text, file=self.out, flush=True)
        if self.bar is not None:
            if step:
                self.bar.update(1)
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


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
    bar = _Progress(len(missing), progress, out)
    try:
        rounds = [ready, deferred]
        for i, batch in enumerate(rounds):
            if i == 1:  # runs other processes held: wait for their lock, take what they landed
                batch = []
                for run in deferred:
                    lock = _lock(cache, run.name)
                    lock.acquire()
                    locks[run.name] = lock
                    if _is_cached(cache, run, retrain_since):
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
            faults = FAULTS
            for run in batch:
                fut = client.submit(train_task, run.family.name, run.config, profile, run.seed,
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
             bar: _Progress, retrain_since, on_landed, wait) -> None:
    while pending:
        try:
            done, _ = wait(list(pending), timeout=2, return_when="FIRST_COMPLETED")
        except TimeoutError:
            done = ()
        for fut in done:
            run = pending.pop(fut)
            if fut.status == "finished":
                _land(fut.result(), run, cache, locks, result, bar, retrain_since)
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


def _land(res: dict, run: PlannedRun, cache: ModelCache, locks: dict, result: ClusterResult,
          bar: _Progress, retrain_since) -> None:
    """Check the returned model's SHA-256, write the entry atomically (the cache's own
    temporary folder and rename, under its lock), record where it trained."""
    model = res["model"]
    digest = hashlib.sha256(model).hexdigest()
    lock = locks.pop(run.name)
    try:
        if digest != res["model_sha256"]:
            raise RuntimeError(f"{run.name}: the model bytes received hash to {digest}, "
                               f"the worker sent {res['model_sha256']}")
    except RuntimeError as exc:
        lock.release()
        result.failed[run.name] = "".join(traceback.format_exception(exc))
        bar.line(f"{run.name}: FAILED ({exc})")
        return
    lock.release()  # get_or_build takes it again (a second FileLock in this process would block)
    built = []

    def build(tmp: Path) -> dict:
        (tmp / MODEL_FILE).write_bytes(model)
        meta = dict(res["meta"])
        meta["trained_on"] = {"worker": res["worker"], "host": res["host"],
                              "threads": res["threads"], "created_on_worker": meta["created"]}
        meta["created"] = time.time()  # this cache's clock: --retrain compares against it
        built.append(True)
        return meta

    entry, hit = cache.get_or_build(run.name, run.key, build, stale_before=retrain_since)
    if not built:
        result.by_other.append(run.name)
        bar.line(f"{run.name}: landed by another process meanwhile, this result dropped")
        return
    if entry.meta["model_sha256"] != res["model_sha256"]:
        raise RuntimeError(f"{run.name}: the entry written hashes to {entry.meta['model_sha256']}, "
                           f"the worker sent {res['model_sha256']}")
    m = entry.meta
    result.landed.append(run.name)
    result.records[run.name] = {"worker": res["worker"], "host": res["host"],
                                "seconds": m["train_seconds"], "threads": res["threads"]}
    best = "n/a" if m["best_val_loss"] is None else f"{m['best_val_loss']:.4f}"
    bar.line(f"{run.name}: trained on {res['worker']} ({res['host']}, {res['threads']} thread"
             f"{'s' if res['threads'] != 1 else ''}), {m['epochs']} epochs, "
             f"{m['train_seconds']:.0f}s, best epoch {m['best_epoch']}, best val_loss {best}")


def report_failures(result: ClusterResult, stream=None) -> None:
    stream = stream or sys.stderr
    for name, text in result.failed.items():
        print(f"[scratchnet] run {name} failed:\n{text}", file=stream, flush=True)
    if result.failed:
        print(f"[scratchnet] {len(result.failed)} run(s) failed: {', '.join(result.failed)}",
              file=stream, flush=True)


# ----------------------------------------------------------------------------- pytest

def pytest_train_missing(config, items) -> None:
    """``pytest --scheduler``: before any test runs, train on the cluster every missing run
    that a selected test verifies (the ``run``-parametrized tests: ``make report`` selects
    them all); those tests then find their models cached.  Anything else a test needs is
    trained in-process, as without the option."""
    import pytest

    from .studies import canonical

    spec = config.getoption("--scheduler")
    if not spec or config.getoption("--no-train") or hasattr(config, "workerinput"):
        return
    wanted, families = set(), {}
    for item in items:
        run = getattr(getattr(item, "callspec", None), "params", {}).get("run")
        if run is not None and "trained" in getattr(item, "fixturenames", ()):
            wanted.add((run.family.name, canonical(run.config), run.seed))
            families.setdefault(run.family.name, run.family)
    if not wanted:
        return
    since = os.environ.get("SCRATCHNET_RETRAIN_SINCE")
    capman = config.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        print(f"\n[scratchnet] {len(wanted)} runs selected ({', '.join(sorted(families))}): "
              f"training the missing ones on {spec}", flush=True)
        with cluster_client(spec) as client:
            result = train_on_cluster(
                client, families.values(), config.scratchnet_profile,
                retrain_since=float(since) if since else None,
                only=lambda fam, c, seed: (fam.name, canonical(c), seed) in wanted)
        report_failures(result, sys.stdout)
    if result.failed:
        raise pytest.UsageError(f"{len(result.failed)} run(s) failed on the cluster: "
                                f"{', '.join(result.failed)} (tracebacks above)")
