"""End to end on real data, smoke profile: train -> cache -> reload without retraining -> verify."""
import os

import pytest

import scratch_layers
from experiments.runs import CACHE_ENV, get_trained
from experiments.verification import compare, keras_predict


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    return tmp_path


def test_smoke_train_cache_reload_and_verify(family, isolated_cache):
    first = get_trained(family, family.baseline, "smoke", 1)
    assert not first.cache_hit
    assert first.path.is_relative_to(isolated_cache)
    meta = first.meta
    assert meta["epochs"] == 1 and meta["seed"] == 1 and meta["train_seconds"] > 0
    assert set(meta["history"]) >= {"loss", "val_loss", "accuracy", "val_accuracy"}
    assert meta["split_sizes"]["train"] <= 300
    # the CPU is recorded (not keyed): retraining on another instruction set gives other bits
    assert meta["cpu"]["model"] and meta["cpu"]["cores"] == os.cpu_count()

    second = get_trained(family, family.baseline, "smoke", 1)
    assert second.cache_hit, "the second run must come from the cache"
    assert second.path == first.path and second.meta["model_sha256"] == meta["model_sha256"]
    assert second.meta["created"] == meta["created"]

    splits = family.load_data()
    kp = keras_predict(second.load_keras(), splits.x_test)
    sp = scratch_layers.load_model(second.path).predict(splits.x_test)
    v = compare(kp, sp, splits.y_test, len(splits.class_names))
    assert v.n_test == len(splits.y_test)
    assert v.passed, f"max|dp| {v.max_abs_diff:.3g}, agreement {v.agreement:.4f}"


def test_retrain_option_trains_again(isolated_cache):
    from experiments.families import family
    fam = family("rnn")
    first = get_trained(fam, fam.baseline, "smoke", 1)
    again = get_trained(fam, fam.baseline, "smoke", 1, retrain=True)
    assert not again.cache_hit and again.meta["created"] > first.meta["created"]


def test_no_train_reports_missing_model_clearly(isolated_cache):
    from experiments.families import family
    from experiments.runs import MissingModel
    fam = family("lstm")
    with pytest.raises(MissingModel, match="make report"):
        get_trained(fam, fam.baseline, "smoke", 1, allow_train=False)


def test_no_train_reads_without_waiting_for_a_training_lock(isolated_cache):
    """Verification (--no-train) must not block on a model another process is training:
    that process holds the entry's lock for the whole training (minutes to hours)."""
    import threading

    from filelock import FileLock

    from experiments.families import family
    from experiments.runs import MissingModel, cache_root
    fam = family("rnn")
    trained = get_trained(fam, fam.baseline, "smoke", 1)
    root = cache_root("smoke")
    results = []

    def read():
        results.append(get_trained(fam, fam.baseline, "smoke", 1, allow_train=False))
        try:
            get_trained(fam, fam.baseline, "smoke", 2, allow_train=False)  # not trained
        except MissingModel as exc:
            results.append(exc)

    locks = [FileLock(str(p)) for p in root.glob("*.lock")]  # as if every entry were training
    assert locks
    for lock in locks:
        lock.acquire()
    try:
        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(60)
        assert not reader.is_alive(), "get_trained(allow_train=False) waited on a training lock"
    finally:
        for lock in locks:
            lock.release()
    assert results[0].path == trained.path and results[0].cache_hit
    assert isinstance(results[1], MissingModel)
