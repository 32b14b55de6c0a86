"""Keras' cached reference outputs (experiments/keras_references.py): stored and loaded
exactly, stale or damaged ones recomputed, a valid one used without Keras, and one model
per family recomputed live on every run, equal to what is cached."""
import json
from types import SimpleNamespace

import numpy as np
import pytest

from experiments.keras_references import (ARRAYS_FILE, LIVE_ATOL, META_FILE, CorruptReference, KerasReference,
                                          ReferenceStore, compute_reference, reference_for, reference_key)
from experiments.runs import cpu_description
from scratch_layers.verify.keras import TWIN_ATOL

N, K = 50, 4
VERSIONS = {"keras": "3.0.0", "tensorflow": "2.0.0"}


def probabilities(seed: int, n: int = N, k: int = K) -> np.ndarray:
    z = np.random.default_rng(seed).normal(size=(n, k))
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def fake_reference(seed: int = 0) -> KerasReference:
    twin = probabilities(seed)
    return KerasReference(twin.astype(np.float32), twin, {"seconds": {"float32": 1.5, "float64_twin": 3.0},
                                                          "cpu": cpu_description(), "created": 0.0})


class Computer:
    """A ``compute`` callable counting its calls (stands in for Keras)."""
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return fake_reference(self.calls)


def stored(tmp_path, key_sha="a" * 64):
    store, compute = ReferenceStore(tmp_path), Computer()
    key, parts = reference_key(key_sha, "data-fp", VERSIONS)
    ref = store.get_or_compute(key, parts, (N, K), compute)
    return store, compute, key, parts, ref


pytestmark = pytest.mark.cache


def test_stored_reference_loads_bit_for_bit_and_second_call_is_a_hit(tmp_path):
    store, compute, key, parts, first = stored(tmp_path)
    again = store.get_or_compute(key, parts, (N, K), compute)
    assert compute.calls == 1 and not first.cached and again.cached
    assert again.float32.dtype == np.float32 and again.float64_twin.dtype == np.float64
    assert np.array_equal(again.float32, first.float32) and np.array_equal(again.float64_twin, first.float64_twin)
    assert np.array_equal(again.probs, first.float32.astype(np.float64))
    meta = json.loads((tmp_path / META_FILE).read_text())
    assert meta["key"] == key and meta["model_sha256"] == "a" * 64 and meta["keras"] == "3.0.0"
    assert meta["cpu"]["model"] and again.keras_seconds == 1.5
    assert again.provenance()["source"] == "cache" and first.provenance()["source"] == "computed"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARRAYS_FILE, META_FILE])  # no temporaries


@pytest.mark.parametrize("change", ["model_sha256", "data", "keras", "tensorflow"])
def test_a_changed_key_recomputes_by_itself(tmp_path, change):
    store, compute, key, parts, _ = stored(tmp_path)
    new = {**parts, change: parts[change] + "-other"}
    key2, parts2 = reference_key(new["model_sha256"], new["data"], {"keras": new["keras"], "tensorflow": new["tensorflow"]})
    assert key2 != key
    ref = store.get_or_compute(key2, parts2, (N, K), compute)
    assert compute.calls == 2 and not ref.cached
    assert json.loads((tmp_path / META_FILE).read_text())["key"] == key2
    assert store.load(key, (N, K)) is None  # the old key is stale, not corrupt


def test_refresh_recomputes_a_valid_reference(tmp_path):
    store, compute, key, parts, first = stored(tmp_path)
    again = store.get_or_compute(key, parts, (N, K), compute, refresh=True)
    assert compute.calls == 2 and not again.cached
    assert not np.array_equal(again.float64_twin, first.float64_twin)  # the new outputs were stored
    assert np.array_equal(store.load(key, (N, K)).float64_twin, again.float64_twin)


def _truncate(store):
    store.arrays_path.write_bytes(store.arrays_path.read_bytes()[:100])


def _garbage_meta(store):
    store.meta_path.write_text("{not json")


def _delete_arrays(store):
    store.arrays_path.unlink()


def _other_shape(store):
    """Rewritten consistently (a matching SHA-256), but with the wrong number of items."""
    meta = json.loads(store.meta_path.read_text())
    with open(store.arrays_path, "wb") as f:
        np.savez(f, float32=np.zeros((N - 1, K), np.float32), float64_twin=np.zeros((N - 1, K)))
    from experiments.cache import sha256_file
    store.meta_path.write_text(json.dumps({**meta, "arrays_sha256": sha256_file(store.arrays_path)}))


def _object_array(store):
    """A pickled (object) array, consistently recorded: np.load must refuse it."""
    meta = json.loads(store.meta_path.read_text())
    with open(store.arrays_path, "wb") as f:
        np.savez(f, float32=np.array([{"x": 1}], dtype=object))
    from experiments.cache import sha256_file
    store.meta_path.write_text(json.dumps({**meta, "arrays_sha256": sha256_file(store.arrays_path)}))


def _non_finite(store):
    meta = json.loads(store.meta_path.read_text())
    bad = np.full((N, K), np.nan, np.float32)
    with open(store.arrays_path, "wb") as f:
        np.savez(f, float32=bad)
    from experiments.cache import sha256_file
    store.meta_path.write_text(json.dumps({**meta, "arrays_sha256": sha256_file(store.arrays_path)}))


@pytest.mark.parametrize("damage", [_truncate, _garbage_meta, _delete_arrays, _other_shape, _object_array,
                                    _non_finite], ids=lambda f: f.__name__.strip("_"))
def test_damaged_reference_is_rejected_and_recomputed(tmp_path, damage, capsys):
    store, compute, key, parts, _ = stored(tmp_path)
    damage(store)
    with pytest.raises(CorruptReference):
        store.load(key, (N, K))
    ref = store.get_or_compute(key, parts, (N, K), compute)
    assert compute.calls == 2 and not ref.cached
    assert "Keras reference rejected" in capsys.readouterr().err
    assert store.load(key, (N, K)).cached


def test_an_oversized_arrays_file_is_refused_before_it_is_read(tmp_path):
    store, _, key, _, _ = stored(tmp_path)
    store.arrays_path.write_bytes(b"\0" * (16 * N * K + 4097))
    with pytest.raises(CorruptReference, match="bytes, more than"):
        store.load(key, (N, K))


def test_a_failed_compute_leaves_the_stored_reference_and_no_temporaries(tmp_path):
    store, _, key, parts, first = stored(tmp_path)

    def broken():
        raise KeyboardInterrupt  # as if the run were interrupted while Keras computes
    with pytest.raises(KeyboardInterrupt):
        store.get_or_compute(key, parts, (N, K), broken, refresh=True)
    assert np.array_equal(store.load(key, (N, K)).float64_twin, first.float64_twin)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([ARRAYS_FILE, META_FILE])


def test_a_valid_cache_never_loads_keras(tmp_path, monkeypatch):
    """What the per-run verification does: with a valid reference, no Keras model is loaded
    and no predict is run."""
    import experiments.keras_references as kr

    def no_keras(*a, **k):
        raise AssertionError("Keras was called although the cached reference is valid")
    ref = fake_reference()
    trained = SimpleNamespace(meta={"model_sha256": "b" * 64}, entry=SimpleNamespace(path=tmp_path),
                              load_keras=no_keras)
    splits = SimpleNamespace(fingerprint="fp", y_test=np.zeros(N, int), class_names=tuple("abcd"),
                             x_test=np.zeros((N, 3)))
    key, parts = reference_key("b" * 64, "fp")  # the installed versions, as reference_for keys them
    ReferenceStore(tmp_path).save(ref, key, parts)
    monkeypatch.setattr(kr, "compute_reference", no_keras)
    got = reference_for(trained, splits)
    assert got.cached and np.array_equal(got.float64_twin, ref.float64_twin)


def test_cached_reference_verifies_exactly_as_a_live_one(tmp_path):
    """verify_reference on a stored reference gives the same verdict and numbers as
    verify_model running Keras live (a small real Keras model and its scratch twin)."""
    import keras

    import scratch_layers
    from experiments.verification import verify_model, verify_reference
    from tests.keras_factories import randomize_weights

    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"),
                              keras.layers.Dense(3, activation="softmax")])
    randomize_weights(model, seed=3)
    path = tmp_path / "m.keras"
    model.save(path)
    scratch = scratch_layers.load_model(path)
    x = np.random.default_rng(0).normal(size=(64, 6)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 64)
    live, kp, _ = verify_model(model, scratch, x, y, 3)
    store = ReferenceStore(tmp_path)
    key, parts = reference_key("c" * 64, "fp")
    store.save(compute_reference(model, x), key, parts)
    cached = store.load(key, (64, 3))
    assert cached.float32.dtype == np.float32  # Keras' float32 softmax, stored without widening
    again, kp2, _ = verify_reference(cached, scratch, x, y, 3)
    assert np.array_equal(kp, kp2)
    skip = {"keras_seconds", "scratch_seconds", "keras_reference"}
    assert {k: v for k, v in again.as_dict().items() if k not in skip} == \
        {k: v for k, v in live.as_dict().items() if k not in skip}
    assert again.passed and again.keras_reference["source"] == "cache"


@pytest.mark.slow
def test_cached_reference_equals_live_keras(pytestconfig, family, profile, record_property):
    """CI's honesty check: the family's baseline model is run through Keras live, float32
    and float64 twin, and must equal its cached reference (float32 within ``LIVE_ATOL``,
    the twin within ``TWIN_ATOL``).  A committed (full-profile) reference must exist."""
    from experiments.plugin import trained_or_skip

    tm = trained_or_skip(pytestconfig, family, family.baseline, profile)
    splits = family.load_data()
    key, _ = reference_key(tm.meta["model_sha256"], splits.fingerprint)
    cached = ReferenceStore(tm.entry.path).load(key, (len(splits.y_test), len(splits.class_names)))
    if cached is None:
        if profile == "full" and not pytestconfig.getoption("--refresh-references"):
            pytest.fail(f"{tm.entry.path.name} has no Keras reference for key {key} (model, data, "
                        f"Keras/TensorFlow versions). Run `pytest --profile full --no-train "
                        f"--refresh-references tests/test_verify_models.py` and commit "
                        f"reports/models/*/{ARRAYS_FILE} and {META_FILE}.")
        cached = reference_for(tm, splits)  # not committed (smoke cache): store it now
    live = compute_reference(tm.load_keras(), splits.x_test)
    d32 = float(np.max(np.abs(live.probs - cached.probs)))
    d64 = float(np.max(np.abs(live.float64_twin - cached.float64_twin)))
    record_property("max_abs_diff_float32_cached_vs_live", d32)
    record_property("max_abs_diff_twin_cached_vs_live", d64)
    where = f"cached on {cached.meta.get('cpu')}, recomputed on {cpu_description()}"
    assert d32 <= LIVE_ATOL, (f"{tm.entry.path.name}: cached float32 Keras outputs differ from a live "
                              f"predict by {d32:.3g} > {LIVE_ATOL} ({where}). If the CPU differs, oneDNN "
                              f"chose other kernels: recompute with --refresh-references on this CPU.")
    assert d64 <= TWIN_ATOL, (f"{tm.entry.path.name}: cached float64-twin outputs differ from a live "
                              f"predict by {d64:.3g} > {TWIN_ATOL} ({where}).")
    print(f"{tm.entry.path.name}: cached vs live Keras max|d| float32 {d32:.2e}, twin {d64:.2e}")
