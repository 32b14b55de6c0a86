"""Model cache: hits, atomic writes, corrupt entries rebuilt, one build across processes."""
import json
import multiprocessing
import time
from pathlib import Path

import pytest

from experiments.cache import MODEL_FILE, ModelCache

pytestmark = pytest.mark.cache


def fake_model_builder(calls: list, payload: bytes = b"PK\x05\x06" + b"\0" * 18, sleep: float = 0.0):
    """A build function writing a tiny valid (empty) zip as the model file."""
    def build(tmp: Path) -> dict:
        calls.append(tmp)
        time.sleep(sleep)
        (tmp / MODEL_FILE).write_bytes(payload)
        return {"history": {"loss": [1.0]}}
    return build


def test_second_call_is_a_cache_hit(tmp_path):
    cache, calls = ModelCache(tmp_path), []
    e1, hit1 = cache.get_or_build("m", "k1", fake_model_builder(calls))
    e2, hit2 = cache.get_or_build("m", "k1", fake_model_builder(calls))
    assert (hit1, hit2) == (False, True) and len(calls) == 1
    assert e2.meta["key"] == "k1" and e2.model_path.is_file()


def test_a_failed_build_leaves_no_entry_and_no_temp_dir(tmp_path):
    cache = ModelCache(tmp_path)

    def broken(tmp):
        (tmp / MODEL_FILE).write_bytes(b"half")
        raise KeyboardInterrupt  # as if the run were interrupted mid-training
    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build("m", "k", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


@pytest.mark.parametrize("damage", ["truncate_model", "garbage_meta", "delete_model", "other_key"])
def test_damaged_entry_is_detected_and_rebuilt(tmp_path, damage, capsys):
    cache, calls = ModelCache(tmp_path), []
    entry, _ = cache.get_or_build("m", "k", fake_model_builder(calls))
    if damage == "truncate_model":
        entry.model_path.write_bytes(entry.model_path.read_bytes()[:5])
    elif damage == "garbage_meta":
        (entry.path / "meta.json").write_text("{not json")
    elif damage == "delete_model":
        entry.model_path.unlink()
    key = "k2" if damage == "other_key" else "k"
    again, hit = cache.get_or_build("m", key, fake_model_builder(calls))
    assert not hit and len(calls) == 2
    assert json.loads((again.path / "meta.json").read_text())["key"] == key
    assert "cache entry rejected" in capsys.readouterr().err


def test_force_and_stale_before(tmp_path):
    cache, calls = ModelCache(tmp_path), []
    cache.get_or_build("m", "k", fake_model_builder(calls))
    _, hit = cache.get_or_build("m", "k", fake_model_builder(calls), force=True)
    assert not hit and len(calls) == 2
    _, hit = cache.get_or_build("m", "k", fake_model_builder(calls), stale_before=time.time() + 10)
    assert not hit and len(calls) == 3  # no "created" in the fake meta: older than anything
    _, hit = cache.get_or_build("m", "k", fake_model_builder(calls), stale_before=None)
    assert hit


def _worker(root, counter):
    def build(tmp):
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)
        (tmp / MODEL_FILE).write_bytes(b"PK\x05\x06" + b"\0" * 18)
        return {"created": time.time()}
    ModelCache(root).get_or_build("shared", "key", build)


def test_concurrent_processes_build_once(tmp_path):
    counter = tmp_path / "builds.txt"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(tmp_path / "cache", counter)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert counter.read_text().count("built") == 1


def test_deflate_zip_keeps_every_member_byte_for_byte(tmp_path):
    import zipfile

    from experiments.cache import deflate_zip
    path = tmp_path / "model.keras"
    members = {"config.json": b'{"a": 1}' * 50, "model.weights.h5": bytes(range(256)) * 40}
    with zipfile.ZipFile(path, "w") as z:  # stored, as Keras writes it
        for name, data in members.items():
            z.writestr(name, data)
    size = path.stat().st_size
    deflate_zip(path)
    with zipfile.ZipFile(path) as z:
        assert {i.filename: z.read(i) for i in z.infolist()} == members
        assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    assert path.stat().st_size < size
