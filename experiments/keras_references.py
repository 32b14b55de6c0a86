"""Keras' reference outputs of a study model, cached content-addressed beside the model entry.

Verifying a run (:mod:`experiments.verification`) compares scratch_layers' probabilities on
the whole test split with two Keras outputs: float32 ``predict`` and the float64 twin's
``predict``.  Both are functions of the model file, the test data and the Keras/TensorFlow
build alone, and the twin is the slowest part of a run (TensorFlow has no fast float64
convolution), so they are computed once and stored in the model's entry::

    <entry>/keras_references.npz    arrays "float32" (n, k) as Keras returned them (float32)
                                    and "float64_twin" (n, k) float64
    <entry>/keras_references.json   the key and its parts, the npz's SHA-256, the CPU the
                                    outputs came from, how long Keras took

The key is ``fingerprint({model_sha256, data, keras, tensorflow, batch_size, format})``:
a retrained model (new SHA-256), other data (another fingerprint, see
:func:`experiments.data._digest`) or another Keras/TensorFlow version misses the cache
and the outputs are computed again by themselves; ``pytest --refresh-references``
recomputes them unconditionally.  The CPU is recorded, not keyed: oneDNN picks float32
kernels by instruction set, so float32 outputs may differ in the last bits from one CPU to
another; ``tests/test_keras_references.py`` recomputes one model per family live on
every run and requires the cached outputs to equal it (float32 within
:data:`LIVE_ATOL`, the twin within ``TWIN_ATOL``).

Writes are atomic (temporary file, then :func:`os.replace`; arrays first, metadata last)
and loads check everything (key, SHA-256 of the arrays, names, dtypes, shapes, finite
values, no pickle), so an interrupted or edited reference is recomputed, never trusted.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from filelock import FileLock

from .cache import sha256_file
from .runs import cpu_description
from .studies import fingerprint
from .verification import keras_predict
from scratch_layers.verify.keras import KERAS_BATCH, as_float64, float64_twin

ARRAYS_FILE = "keras_references.npz"
META_FILE = "keras_references.json"
REFERENCE_FORMAT = 1   # bump when what is stored, or how it is computed, changes meaning
LIVE_ATOL = 1e-6       # cached float32 outputs vs the same model recomputed live
NAMES = ("float32", "float64_twin")


class CorruptReference(RuntimeError):
    """A stored reference exists but cannot be trusted (truncated, edited, wrong key)."""


def library_versions() -> dict:
    """Keras' and TensorFlow's installed versions, read from the package metadata (no
    TensorFlow import: a run whose references are cached never starts TensorFlow)."""
    def version(*dists):
        for dist in dists:
            try:
                return importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                continue
        return None
    tf = version("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos")
    if tf is None:  # an unusual distribution name: ask the module itself
        import tensorflow
        tf = tensorflow.__version__
    return {"keras": version("keras"), "tensorflow": tf}


def reference_key(model_sha256: str, data_fingerprint: str, versions: dict | None = None) -> tuple[str, dict]:
    """``(key, parts)``: what Keras' outputs on a model's test split depend on."""
    parts = {"model_sha256": model_sha256, "data": data_fingerprint,
             **(library_versions() if versions is None else versions),
             "batch_size": KERAS_BATCH, "format": REFERENCE_FORMAT}
    return fingerprint(parts, n=16), parts


@dataclass(frozen=True)
class KerasReference:
    """Keras' outputs on one test split: ``float32`` (Keras' own dtype) and the float64
    twin's (None when not computed); ``meta`` says where and when they came from."""
    float32: np.ndarray
    float64_twin: np.ndarray | None
    meta: dict = field(default_factory=dict)
    cached: bool = False

    @property
    def probs(self) -> np.ndarray:
        """The float32 outputs as float64 (exact: every float32 is a float64)."""
        return np.asarray(self.float32, dtype=np.float64)

    @property
    def twin_probs(self) -> np.ndarray | None:
        return self.float64_twin

    @property
    def keras_seconds(self) -> float:
        return float(self.meta.get("seconds", {}).get("float32", 0.0))

    def provenance(self) -> dict:
        """What the report says of these outputs: cached or computed now, on which CPU."""
        return {"source": "cache" if self.cached else "computed",
                **{k: self.meta.get(k) for k in ("key", "keras", "tensorflow", "cpu", "created")}}


def compute_reference(keras_model, x, twin: bool = True) -> KerasReference:
    """Run Keras on ``x``: float32 ``predict`` and, with ``twin``, the float64 twin's."""
    t0 = time.perf_counter()
    kp = keras_predict(keras_model, x)
    t1 = time.perf_counter()
    # keras_predict widens to float64; Keras' softmax is float32, so narrowing back is
    # exact and halves the stored size (kept float64 if a model ever returns more)
    f32 = kp.astype(np.float32)
    f32 = f32 if np.array_equal(f32, kp) else kp
    tp = None
    if twin:
        tp = keras_predict(float64_twin(keras_model), as_float64(x)) if len(x) else np.zeros_like(kp)
    t2 = time.perf_counter()
    return KerasReference(f32, tp, {"seconds": {"float32": round(t1 - t0, 3), "float64_twin": round(t2 - t1, 3)},
                                    "cpu": cpu_description(), "created": time.time()})


class ReferenceStore:
    """The stored references of one model entry directory (see the module docstring)."""

    def __init__(self, entry_dir: Path | str):
        self.dir = Path(entry_dir)
        self.arrays_path = self.dir / ARRAYS_FILE
        self.meta_path = self.dir / META_FILE

    def load(self, key: str, shape: tuple[int, int]) -> KerasReference | None:
        """The stored reference with ``key`` whose arrays have ``shape`` (n_test, n_classes);
        None if nothing is stored or it was stored under another key (a stale reference:
        other model bytes, data or library versions).

        Raises :class:`CorruptReference` when something with this key is there but fails
        its checks."""
        if not self.meta_path.exists():
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise CorruptReference(f"{self.meta_path}: unreadable ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("key") != key:
            return None
        if not self.arrays_path.is_file():
            raise CorruptReference(f"{self.arrays_path} is missing")
        # size before reading: n*k float64 twin plus at most n*k float64 "float32" array,
        # and the zip headers; anything larger is not ours
        limit = 16 * shape[0] * shape[1] + 4096
        if self.arrays_path.stat().st_size > limit:
            raise CorruptReference(f"{self.arrays_path}: {self.arrays_path.stat().st_size} bytes, more "
                                   f"than {limit} for {shape[0]} x {shape[1]} outputs")
        if sha256_file(self.arrays_path) != meta.get("arrays_sha256"):
            raise CorruptReference(f"{self.arrays_path} does not match its recorded SHA-256 "
                                   "(truncated or modified)")
        try:
            with np.load(self.arrays_path, allow_pickle=False) as npz:
                arrays = {name: npz[name] for name in NAMES if name in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise CorruptReference(f"{self.arrays_path}: unreadable ({exc})") from exc
        if "float32" not in arrays:
            raise CorruptReference(f"{self.arrays_path} has no 'float32' array")
        for name, a in arrays.items():
            allowed = (np.float32, np.float64) if name == "float32" else (np.float64,)
            if a.dtype not in allowed or a.shape != tuple(shape):
                raise CorruptReference(f"{self.arrays_path}: {name!r} is {a.dtype} {a.shape}, "
                                       f"expected {'/'.join(np.dtype(d).name for d in allowed)} {tuple(shape)}")
            if not np.isfinite(a).all():
                raise CorruptReference(f"{self.arrays_path}: {name!r} holds non-finite values")
        return KerasReference(arrays["float32"], arrays.get("float64_twin"), meta, cached=True)

    def save(self, reference: KerasReference, key: str, parts: dict) -> KerasReference:
        """Store ``reference`` under ``key`` atomically; return it with its stored metadata."""
        arrays = {"float32": reference.float32}
        if reference.float64_twin is not None:
            arrays["float64_twin"] = reference.float64_twin
        tmp_arrays = self.dir / f"{ARRAYS_FILE}.tmp-{os.getpid()}"
        tmp_meta = self.dir / f"{META_FILE}.tmp-{os.getpid()}"
        try:
            with open(tmp_arrays, "wb") as f:  # a file object: np.savez adds no ".npz" suffix
                np.savez_compressed(f, **arrays)
            meta = {**reference.meta, "key": key, **parts, "arrays_sha256": sha256_file(tmp_arrays),
                    "arrays": {k: [a.dtype.name, *a.shape] for k, a in arrays.items()}}
            tmp_meta.write_text(json.dumps(meta, indent=1))
            # arrays first, metadata last: a crash in between leaves metadata whose
            # SHA-256 no longer matches, which the next load rejects
            os.replace(tmp_arrays, self.arrays_path)
            os.replace(tmp_meta, self.meta_path)
        finally:
            tmp_arrays.unlink(missing_ok=True)
            tmp_meta.unlink(missing_ok=True)
        return KerasReference(reference.float32, reference.float64_twin, meta, cached=False)

    def get_or_compute(self, key: str, parts: dict, shape: tuple[int, int],
                       compute: Callable[[], KerasReference], refresh: bool = False) -> KerasReference:
        """The stored reference for ``key``, or ``compute()`` stored now (``refresh``
        recomputes even a valid one).  Concurrent processes wait on a lock beside the
        entry; the second finds the first one's reference."""
        if not refresh:
            found = self._load_or_warn(key, shape)
            if found is not None:
                return found
        with FileLock(str(self.dir.parent / f"{self.dir.name}.references.lock")):
            if not refresh:
                found = self._load_or_warn(key, shape)
                if found is not None:
                    return found
            return self.save(compute(), key, parts)

    def _load_or_warn(self, key, shape):
        try:
            return self.load(key, shape)
        except CorruptReference as exc:
            print(f"[scratchnet] Keras reference rejected, recomputing: {exc}", file=sys.stderr)
            return None


def reference_for(trained, splits, refresh: bool = False) -> KerasReference:
    """Keras' outputs for a trained study model (:class:`experiments.runs.TrainedModel`) on
    the whole test split of ``splits``: from its entry, or computed with Keras now and
    stored there.  Keras is loaded only when they are computed."""
    key, parts = reference_key(trained.meta["model_sha256"], splits.fingerprint)
    shape = (len(splits.y_test), len(splits.class_names))
    return ReferenceStore(trained.entry.path).get_or_compute(
        key, parts, shape, lambda: compute_reference(trained.load_keras(), splits.x_test), refresh)
