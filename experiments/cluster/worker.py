"""The task a Dask worker runs: one (configuration, seed) trained by the in-process code, with
test-only fault hooks."""
from __future__ import annotations

import hashlib
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from ..cache import MODEL_FILE
from ..runs import config_key, set_tf_threads, train_to

# Test-only fault injection: tests set this to a dict, the CLI and pytest never do.
# {"dir": folder for markers, "kill_once": [...], "fail": [...], "stall": [...]} (entry
# names): a listed run's first attempt kills its worker process (SIGKILL, as the OOM
# killer would); every attempt raises; or sleeps ``stall_seconds`` and then raises.
# Each attempt appends a line to ``dir/<name>.attempts``.  The dict travels to the
# worker as a task argument (the client reads it when it submits).
FAULTS: dict | None = None

# A worker process trains one run at a time, on all its threads (TensorFlow's intra-op
# pool is sized to the worker's --nthreads); a worker with several threads queues its
# other runs here rather than oversubscribe its cores.
_TRAIN_LOCK = threading.Lock()


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
    from ..families import family

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
