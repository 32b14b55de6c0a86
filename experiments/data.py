"""Datasets: CIFAR-10 and NusaX-Sentiment (Indonesian), local copy or real download.

A local data dir is used when ``SCRATCHNET_DATA_DIR`` is set (CI sets it to
``../shared/data``); it must then hold the files, or loading stops with an error
naming the path and the variable.  Without it, the real download paths are used:
``keras.datasets.cifar10`` and the Hugging Face dataset ``indonlp/NusaX-senti``.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR_ENV = "SCRATCHNET_DATA_DIR"
SPLIT_SEED = 1234  # fixed seed of the stratified 40k/10k CIFAR train/val split

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck")
NUSAX_LABELS = ("negative", "neutral", "positive")


class DataError(RuntimeError):
    """A dataset is missing or unreadable; the message says where and what to do."""


@dataclass(frozen=True)
class Splits:
    """Train/validation/test arrays of one dataset, plus where they came from."""
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]
    source: str
    fingerprint: str = field(default="")

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def subsample(self, n_train: int, n_val: int) -> "Splits":
        """First ``n`` items of train/val (stratified order is kept); test stays whole."""
        return Splits(self.x_train[:n_train], self.y_train[:n_train],
                      self.x_val[:n_val], self.y_val[:n_val],
                      self.x_test, self.y_test, self.class_names,
                      self.source + f" (subsample {n_train}/{n_val})", self.fingerprint)


def local_data_dir() -> Path | None:
    """The local data dir from ``SCRATCHNET_DATA_DIR``, or None for the online path."""
    raw = os.environ.get(DATA_DIR_ENV)
    if not raw:
        return None
    path = Path(raw).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"{DATA_DIR_ENV}={raw!r} points to {path}, which is not a directory. "
                        f"Set {DATA_DIR_ENV} to the folder holding cifar-10-batches-py/ and "
                        f"nusax-sentiment/, or unset it to download the datasets.")
    return path


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise DataError(f"{what} not found at {path} (from {DATA_DIR_ENV}). Put the dataset "
                        f"there, point {DATA_DIR_ENV} elsewhere, or unset it to download.")
    return path


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes() if a.dtype != object else "\x1f".join(map(str, a.ravel())).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- CIFAR-10

class _ArrayOnlyUnpickler(pickle.Unpickler):
    """CIFAR batches are pickles; allow only the numpy/builtin types they contain."""
    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"),
                ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)  # planes -> NHWC
    except Exception as exc:  # truncated file, wrong format, ...
        raise DataError(f"cannot read CIFAR-10 batch {path}: {exc}. Replace the file with the "
                        f"canonical cifar-10-batches-py copy (data dir from {DATA_DIR_ENV}).") from exc
    if len(images) != len(labels):
        raise DataError(f"CIFAR-10 batch {path} has {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _cifar_raw() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    root = local_data_dir()
    if root is None:
        import keras  # the real download path, for online users
        (x, y), (xt, yt) = keras.datasets.cifar10.load_data()
        return x, y.ravel().astype(np.int64), xt, yt.ravel().astype(np.int64), "keras.datasets.cifar10"
    folder = _require(root / "cifar-10-batches-py", "CIFAR-10 folder cifar-10-batches-py/")
    parts = [_read_cifar_batch(_require(folder / f"data_batch_{i}", f"CIFAR-10 data_batch_{i}"))
             for i in range(1, 6)]
    xt, yt = _read_cifar_batch(_require(folder / "test_batch", "CIFAR-10 test_batch"))
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return x, y, xt, yt, str(folder)


def stratified_split(y: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) with ``n_val`` validation items in the class proportions of ``y``.

    Both index lists are shuffled with the same seed, so any prefix of them is roughly
    class-balanced too (the smoke profile relies on that).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    val_counts = np.floor(counts * n_val / len(y)).astype(int)
    val_counts[: n_val - val_counts.sum()] += 1  # hand out the rounding remainder
    train_idx, val_idx = [], []
    for c, k in zip(classes, val_counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        val_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(val_idx))


@lru_cache(maxsize=1)
def load_cifar10() -> Splits:
    """CIFAR-10: 40k train / 10k val (stratified 4:1, seed ``SPLIT_SEED``) / 10k test, in [0, 1]."""
    x, y, xt, yt, source = _cifar_raw()
    if x.shape != (50000, 32, 32, 3) or xt.shape != (10000, 32, 32, 3):
        raise DataError(f"CIFAR-10 from {source} has shapes {x.shape}/{xt.shape}, "
                        "expected (50000, 32, 32, 3)/(10000, 32, 32, 3)")
    tr, va = stratified_split(y, 10000, SPLIT_SEED)
    fingerprint = _digest(x, y, xt, yt, np.array([SPLIT_SEED]))
    scale = np.float32(1 / 255)
    return Splits(x[tr] * scale, y[tr], x[va] * scale, y[va], xt * scale, yt,
                  CIFAR_CLASSES, source, fingerprint)


# ----------------------------------------------------------------------------- NusaX

def _nusax_dataset():
    import datasets  # both paths go through the `datasets` library
    root = local_data_dir()
    if root is None:
        ds = datasets.load_dataset("indonlp/NusaX-senti", "ind")
        names = ds["train"].features["label"].names  # ClassLabel ints -> names
        to_name = lambda v: names[v]  # noqa: E731
        return {"train": ds["train"], "valid": ds["validation"], "test": ds["test"]}, to_name, \
            "huggingface:indonlp/NusaX-senti (ind)"
    folder = root / "nusax-sentiment" / "indonesian"
    files = {s: str(_require(folder / f"{s}.csv", f"NusaX file {s}.csv")) for s in ("train", "valid", "test")}
    try:
        ds = datasets.load_dataset("csv", data_files=files, keep_in_memory=True)
    except Exception as exc:
        raise DataError(f"cannot read the NusaX CSV files in {folder}: {exc}. They need the "
                        f"columns id,text,label (data dir from {DATA_DIR_ENV}).") from exc
    return ds, str, str(folder)


def _label_ids(names) -> np.ndarray:
    ids = []
    for n in names:
        key = str(n).strip().lower()
        if key not in NUSAX_LABELS:
            raise DataError(f"unknown NusaX label {n!r}; expected one of {NUSAX_LABELS}")
        ids.append(NUSAX_LABELS.index(key))
    return np.asarray(ids, dtype=np.int64)


@lru_cache(maxsize=1)
def load_nusax() -> Splits:
    """NusaX-Sentiment Indonesian, official 500/100/400 splits; x = raw strings, y in 0..2."""
    ds, to_name, source = _nusax_dataset()
    arrays = []
    for split in ("train", "valid", "test"):
        part = ds[split]
        missing = {"text", "label"} - set(part.column_names)
        if missing:
            raise DataError(f"NusaX split {split} from {source} lacks columns {sorted(missing)}")
        texts = np.asarray([str(t) for t in part["text"]], dtype=object)
        arrays += [texts, _label_ids(to_name(v) for v in part["label"])]
    fingerprint = _digest(*arrays)
    return Splits(*arrays, class_names=NUSAX_LABELS, source=source, fingerprint=fingerprint)
