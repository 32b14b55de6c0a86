"""Datasets: split sizes, class balance, label mapping, clear errors."""
import csv
import os

import numpy as np
import pytest

from experiments import data
from experiments.data import DataError, load_cifar10, load_nusax

pytestmark = pytest.mark.data


@pytest.fixture
def data_dir():
    """The local dataset copy these tests compare against (CI: ../shared/data)."""
    root = data.local_data_dir()
    if root is None:
        pytest.fail(f"set {data.DATA_DIR_ENV} to the local dataset folder to run this test")
    return root


@pytest.mark.cnn
def test_cifar_splits_are_40k_10k_10k_stratified_and_scaled():
    s = load_cifar10()
    assert s.sizes() == {"train": 40000, "val": 10000, "test": 10000}
    assert np.array_equal(np.bincount(s.y_train, minlength=10), [4000] * 10)
    assert np.array_equal(np.bincount(s.y_val, minlength=10), [1000] * 10)
    assert s.x_train.dtype == np.float32 and s.x_train.shape[1:] == (32, 32, 3)
    assert 0.0 <= s.x_test.min() and s.x_test.max() <= 1.0 and s.x_train.max() > 0.99


def test_stratified_split_is_disjoint_complete_and_seeded():
    y = np.repeat(np.arange(5), [100, 200, 300, 50, 350])
    tr, va = data.stratified_split(y, 200, seed=7)
    assert len(va) == 200 and len(tr) == 800
    assert len(np.intersect1d(tr, va)) == 0 and len(np.union1d(tr, va)) == 1000
    assert np.array_equal(np.bincount(y[va]), [20, 40, 60, 10, 70])
    tr2, va2 = data.stratified_split(y, 200, seed=7)
    assert np.array_equal(va, va2) and np.array_equal(tr, tr2)


def test_nusax_official_splits_and_label_mapping(data_dir):
    s = load_nusax()
    assert s.sizes() == {"train": 500, "val": 100, "test": 400}
    assert s.class_names == ("negative", "neutral", "positive")
    with open(data_dir / "nusax-sentiment" / "indonesian" / "test.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["text"] for r in rows] == list(s.x_test)
    assert [s.class_names[i] for i in s.y_test] == [r["label"] for r in rows]
    assert set(np.unique(s.y_train)) == {0, 1, 2}


def test_nusax_hub_path_maps_labels_by_classlabel_names(monkeypatch):
    """The Hugging Face copy has int labels; they are mapped through its ClassLabel names."""
    import datasets

    names = ["positive", "negative", "neutral"]  # deliberately not our order
    feats = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    part = datasets.Dataset.from_dict({"text": ["bagus", "jelek", "biasa"], "label": [0, 1, 2]}, features=feats)
    fake = datasets.DatasetDict(train=part, validation=part, test=part)
    monkeypatch.delenv(data.DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    load_nusax.cache_clear()
    try:
        s = load_nusax()
    finally:
        load_nusax.cache_clear()
    assert [s.class_names[i] for i in s.y_train] == ["positive", "negative", "neutral"]
    assert s.source.startswith("huggingface:")


def test_missing_data_dir_names_path_and_env_var(monkeypatch, tmp_path):
    missing = tmp_path / "nowhere"
    monkeypatch.setenv(data.DATA_DIR_ENV, str(missing))
    with pytest.raises(DataError, match=r"SCRATCHNET_DATA_DIR.*nowhere|nowhere.*SCRATCHNET_DATA_DIR"):
        data.local_data_dir()
    load_cifar10.cache_clear()
    with pytest.raises(DataError, match="not a directory"):
        load_cifar10.__wrapped__()


def test_data_dir_without_the_dataset_is_an_error(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError, match="cifar-10-batches-py.*not found"):
        load_cifar10.__wrapped__()
    with pytest.raises(DataError, match="train.csv"):
        load_nusax.__wrapped__()


def test_truncated_cifar_batch_is_a_clear_error(tmp_path, data_dir):
    bad = tmp_path / "data_batch_1"
    bad.write_bytes((data_dir / "cifar-10-batches-py" / "data_batch_1").read_bytes()[:1000])
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch"):
        data._read_cifar_batch(bad)


def test_cifar_unpickler_refuses_code(tmp_path):
    import pickle
    evil = tmp_path / "data_batch_1"
    evil.write_bytes(pickle.dumps(os.system))
    with pytest.raises(DataError, match="refusing"):
        data._read_cifar_batch(evil)
