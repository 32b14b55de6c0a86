"""A finished task's result landed in the client's cache: SHA-256 checked, entry written atomically."""
from __future__ import annotations

import hashlib
import time
import traceback
from pathlib import Path

from ..cache import MODEL_FILE, ModelCache
from .plan import ClusterResult, PlannedRun
from .progress import Progress


def land(res: dict, run: PlannedRun, cache: ModelCache, locks: dict, result: ClusterResult,
         bar: Progress, retrain_since) -> None:
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
