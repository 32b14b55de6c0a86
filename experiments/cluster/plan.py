"""Which runs go to the cluster (those missing from the cache), and the record of what became of each."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

from ..cache import CorruptEntry, ModelCache
from ..runs import cache_root, config_key, entry_name, profile_data
from ..studies import Family


@dataclass(frozen=True)
class PlannedRun:
    family: Family
    config: dict
    seed: int
    key: str
    name: str


@dataclass
class ClusterResult:
    """What a call of :func:`experiments.cluster.submit.train_on_cluster` did, by entry name."""
    cached: list[str] = field(default_factory=list)      # found in the cache: not submitted
    submitted: list[str] = field(default_factory=list)   # sent to the cluster
    landed: list[str] = field(default_factory=list)      # written into the cache from a task
    by_other: list[str] = field(default_factory=list)    # landed by another process meanwhile
    failed: dict[str, str] = field(default_factory=dict)  # name -> traceback
    records: dict[str, dict] = field(default_factory=dict)  # name -> worker, host, seconds, ...

    @property
    def ok(self) -> bool:
        return not self.failed


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
            (cached if is_cached(cache, run, retrain_since) else missing).append(run)
    return missing, cached, splits_of


def is_cached(cache: ModelCache, run: PlannedRun, retrain_since: float | None) -> bool:
    try:
        entry = cache.load(run.name, run.key)
    except CorruptEntry:
        return False  # rebuilt, as get_or_build would
    return entry is not None and not (retrain_since and entry.meta.get("created", 0) < retrain_since)
