"""Dask distributed training on a loopback LocalCluster of 2 single-threaded workers.

Smoke profile, a few runs each: entries trained on workers have the in-process keys and
verify against scratch_layers; a worker-trained run equals the in-process run bit for bit
at equal thread count; a worker killed mid-run is replaced and its run lands once; a
failing run is reported with its traceback and the CLI exits non-zero; a second call
submits nothing; Ctrl-C keeps the landed entries; ``pytest --scheduler`` trains before the
tests.  The cluster is started and closed here and leaves no process behind.
"""
import io
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest

from experiments.cache import ModelCache
from experiments.cluster import worker
from experiments.cluster.scheduler import SchedulerError, cluster_client, parse_scheduler
from experiments.cluster.submit import train_on_cluster
from experiments.families import all_families, family
from experiments.runs import (CACHE_ENV, cache_root, config_key, entry_name, get_trained,
                              profile_data)

pytestmark = pytest.mark.cache
ROOT = Path(__file__).resolve().parent.parent


def _alive_children() -> set[int]:
    """This process's descendants, less multiprocessing's resource tracker (a helper of
    this process, not of the cluster: it lives as long as pytest does)."""
    out = set()
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in " ".join(p.cmdline()):
                out.add(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.fixture(scope="module")
def client():
    before = _alive_children()
    with cluster_client("local:2") as c:
        workers = c.scheduler_info()["workers"].values()
        assert c.scheduler.address.startswith("tcp://127.0.0.1:")
        assert len(workers) == 2 and all(w["nthreads"] == 1 for w in workers)
        assert all(w["host"] == "127.0.0.1" for w in workers)
        yield c
    left = _alive_children() - before
    for pid in left:  # not ours to leave: end them, then fail
        psutil.Process(pid).kill()
    assert not left, f"the cluster left processes behind: {left}"


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cache(shared_cache, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(shared_cache))
    return shared_cache


@pytest.fixture
def faults(tmp_path, monkeypatch):
    """The test-only fault hook: a dict the test fills in, sent with each task."""
    spec = {"dir": str(tmp_path / "faults")}
    monkeypatch.setattr(worker, "FAULTS", spec)
    return spec


def _name(fam, config, seed=1):
    splits = profile_data(fam, "smoke")
    return entry_name(fam, config, config_key(fam, config, "smoke", splits, seed), seed)


def _only(*pairs):
    """``only`` for train_on_cluster: these (family name, config) pairs, seed 1."""
    wanted = [(f, json.dumps(c, sort_keys=True)) for f, c in pairs]
    return lambda fam, c, s: s == 1 and (fam.name, json.dumps(c, sort_keys=True)) in wanted


def _weights(path: Path) -> dict:
    import h5py
    with zipfile.ZipFile(path) as z:
        f = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
        out = {}
        f.visititems(lambda n, o: out.__setitem__(n, o[()]) if isinstance(o, h5py.Dataset) else None)
    return out


def _no_partial_entries(root: Path):
    assert not [p.name for p in root.iterdir() if ".tmp-" in p.name], "a partial entry was left"


def test_every_family_trains_on_the_cluster_with_in_process_keys(client, cache):
    import scratch_layers
    from experiments.verification import compare, keras_predict

    fams = all_families()
    out = io.StringIO()
    result = train_on_cluster(client, fams, "smoke", progress=False, out=out,
                              only=_only(*[(f.name, f.baseline) for f in fams]))
    assert result.ok and not result.cached
    assert sorted(result.landed) == sorted(_name(f, f.baseline) for f in fams)
    for fam in fams:
        tm = get_trained(fam, fam.baseline, "smoke", 1, allow_train=False)  # the in-process key
        assert tm.cache_hit and tm.entry.path.name in result.landed
        assert tm.meta["trained_on"]["threads"] == 1 and tm.meta["tf_intra_op_threads"] == 1
        assert f"{tm.entry.path.name}: trained on tcp://127.0.0.1:" in out.getvalue()
        splits = fam.load_data()
        x, y = splits.x_test[:2000], splits.y_test[:2000]  # CIFAR: 2,000 of 10,000 (time)
        kp = keras_predict(tm.load_keras(), x)
        sp = scratch_layers.load_model(tm.path).predict(x)
        v = compare(kp, sp, y, len(splits.class_names))
        assert v.passed, f"{fam.name}: max|dp| {v.max_abs_diff:.3g}"
    _no_partial_entries(cache_root("smoke"))


def test_a_second_call_finds_everything_cached_and_submits_nothing(client, cache, monkeypatch):
    submitted = []
    monkeypatch.setattr(client, "submit", lambda *a, **k: submitted.append(a))
    fams = all_families()
    result = train_on_cluster(client, fams, "smoke", progress=False, out=io.StringIO(),
                              only=_only(*[(f.name, f.baseline) for f in fams]))
    assert submitted == [] and result.submitted == [] and result.landed == []
    assert len(result.cached) == 3


def test_a_run_another_process_is_training_is_waited_for_not_submitted(client, cache, monkeypatch):
    """Two trainers on one cache: the entry's file lock.  While an in-process trainer holds
    it (here a thread standing in for another process), the cluster client does not submit
    the run; it waits for the lock and takes the entry the other trainer landed."""
    import shutil
    import threading

    fam = family("lstm")
    config = {**fam.baseline, "layers": 2}
    name = _name(fam, config)
    key = config_key(fam, config, "smoke", profile_data(fam, "smoke"), 1)
    donor = ModelCache(cache_root("smoke")).entry_path(_name(fam, fam.baseline)) / "model.keras"
    holding, release = threading.Event(), threading.Event()

    def other_trainer():
        def build(tmp):
            holding.set()
            release.wait(60)
            shutil.copy(donor, tmp / "model.keras")
            return {"created": 1e12}
        ModelCache(cache_root("smoke")).get_or_build(name, key, build)

    submitted, results = [], []
    monkeypatch.setattr(client, "submit", lambda *a, **k: submitted.append(a))
    other = threading.Thread(target=other_trainer)
    other.start()
    assert holding.wait(60)
    waiter = threading.Thread(target=lambda: results.append(train_on_cluster(
        client, [fam], "smoke", progress=False, out=io.StringIO(), only=_only(("lstm", config)))))
    waiter.start()
    waiter.join(3)
    assert waiter.is_alive(), "the client must wait for the other trainer's lock"
    release.set()
    other.join(60)
    waiter.join(60)
    assert results and results[0].by_other == [name] and results[0].submitted == []
    assert submitted == []


def test_worker_trained_run_equals_in_process_run_bit_for_bit(client, cache, tmp_path):
    """At equal thread count (1) TensorFlow gives the same weights on a worker as in a
    fresh process: the same ops in the same order on one thread, the same seeds (Keras'
    unseeded initializers draw from a private generator; see runs.private_python_random)."""
    fam = family("rnn")
    worker_entry = ModelCache(cache_root("smoke")).entry_path(_name(fam, fam.baseline))
    code = ("from experiments.runs import set_tf_threads, get_trained\n"
            "from experiments.families import family\n"
            "set_tf_threads(1); f = family('rnn')\n"
            "print(get_trained(f, f.baseline, 'smoke', 1).entry.path)\n")
    env = {**os.environ, CACHE_ENV: str(tmp_path), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    local_entry = Path(proc.stdout.strip().splitlines()[-1])
    assert local_entry.name == worker_entry.name  # same key
    mw, ml = (json.loads((p / "meta.json").read_text()) for p in (worker_entry, local_entry))
    assert mw["history"] == ml["history"]  # every float of every epoch
    ww, wl = _weights(worker_entry / "model.keras"), _weights(local_entry / "model.keras")
    assert ww.keys() == wl.keys()
    assert all(np.array_equal(ww[k], wl[k]) for k in ww), "weights differ"


def test_a_killed_worker_is_retried_and_a_failing_run_reported(client, cache, faults):
    fam = family("rnn")
    uni = {**fam.baseline, "bidirectional": False}
    small = {**fam.baseline, "units": 32}
    killed, failing = _name(fam, uni), _name(fam, small)
    faults.update(kill_once=[killed], fail=[failing])
    result = train_on_cluster(client, [fam], "smoke", progress=False, out=io.StringIO(),
                              only=_only(("rnn", uni), ("rnn", small)))
    attempts = (Path(faults["dir"]) / f"{killed}.attempts").read_text().split()
    assert (Path(faults["dir"]) / f"{killed}.killed").exists()
    assert len(attempts) == 2 and attempts[0] != attempts[1], "the run must restart in a new process"
    assert result.landed == [killed]  # landed once
    assert list(result.failed) == [failing]
    assert "injected failure" in result.failed[failing] and "Traceback" in result.failed[failing]
    cache_ = ModelCache(cache_root("smoke"))
    assert cache_.load(killed, json.loads((cache_.entry_path(killed) / "meta.json").read_text())["key"])
    assert not cache_.entry_path(failing).exists()
    _no_partial_entries(cache_.root)
    client.wait_for_workers(2, timeout=120)  # the nanny replaced the killed worker


def test_cli_exits_non_zero_naming_the_failed_runs(client, cache, faults, capsys):
    from experiments.__main__ import main
    fam = family("lstm")
    names = [_name(fam, c, s) for c, s in fam.runs("smoke")]
    missing = [n for n in names if not (cache_root("smoke") / n).exists()]
    assert missing and len(missing) < len(names)
    faults.update(fail=missing)  # every missing run fails at once: nothing trains
    rc = main(["train", "--profile", "smoke", "--family", "lstm",
               "--scheduler", client.scheduler.address])
    out, err = capsys.readouterr()
    assert rc == 1
    assert f"{len(missing)} run(s) failed: " in err and all(n in err for n in missing)
    assert "injected failure" in err and "Traceback" in err
    assert f"0 trained, {len(names) - len(missing)} cached" in out


def test_pytest_scheduler_option_trains_before_the_tests(client, cache, tmp_path):
    fam = family("rnn")
    config = {**fam.baseline, "units": 128}
    name = _name(fam, config)
    env = {**os.environ, CACHE_ENV: str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--profile", "smoke",
         "--scheduler", client.scheduler.address, "tests/test_verify_models.py",
         "-k", "test_scratch_matches_keras and rnn-1-128-true-s1"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "1 runs selected (rnn)" in proc.stdout
    assert f"{name}: trained on tcp://127.0.0.1:" in proc.stdout
    assert "1 passed" in proc.stdout
    meta = json.loads((tmp_path / "smoke" / name / "meta.json").read_text())
    assert meta["trained_on"]["threads"] == 1


def test_ctrl_c_keeps_landed_entries_and_cancels_the_rest(client, cache, faults):
    """Runs last: the stalled task keeps its worker thread until the cluster closes."""
    from filelock import FileLock
    fam = family("rnn")
    lands, stalls = {**fam.baseline, "layers": 2}, {**fam.baseline, "layers": 3}
    landing, stalled = _name(fam, lands), _name(fam, stalls)
    faults.update(stall=[stalled], stall_seconds=600)

    def interrupt(name):
        raise KeyboardInterrupt

    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        train_on_cluster(client, [fam], "smoke", progress=False, out=out,
                         only=_only(("rnn", lands), ("rnn", stalls)),
                         on_landed=interrupt)
    root = cache_root("smoke")
    assert get_trained(fam, lands, "smoke", 1, allow_train=False).entry.path.name == landing
    assert not (root / stalled).exists()
    _no_partial_entries(root)
    FileLock(str(root / f"{stalled}.lock")).acquire(timeout=0)  # released by the client
    assert "1 runs in flight cancelled; 1 landed entries kept" in out.getvalue()


def test_scheduler_spec_is_checked():
    assert parse_scheduler("local:3") == ("local", 3)
    assert parse_scheduler("tcp://10.0.0.5:8786") == ("address", "tcp://10.0.0.5:8786")
    for bad in ("local:0", "local:x", "nowhere"):
        with pytest.raises(SchedulerError):
            parse_scheduler(bad)
