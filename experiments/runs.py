"""Runs: one configuration of a family trained with Keras on one seed, or loaded from the cache.

A *run* is one configuration trained with one seed: ``keras.utils.set_random_seed(seed)``,
Adam (optionally on a warm-up + cosine-decay schedule) and
SparseCategoricalCrossentropy, early stopping on validation loss with the best
weights restored (never before ``min_epochs``), saved without optimizer state.
The seeds of a profile are part of its recipe (``recipe["seeds"]``); each run is its
own cache entry, keyed by the recipe *without* the seed list plus the run's seed, so
adding seeds later reuses every run already trained.
"""
from __future__ import annotations

import os
import platform
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .cache import Entry, ModelCache, MODEL_FILE, deflate_zip
from .profiles import SMOKE_SIZES
from .studies import Family, fingerprint, slug

CACHE_ENV = "SCRATCHNET_CACHE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FORMAT_VERSION = 2  # bump when the entry layout or training loop changes meaning


class MissingModel(RuntimeError):
    """A model is not in the cache and training was not allowed."""


def cache_root(profile: str) -> Path:
    """Full-profile models live in ``reports/models`` (committed); others in ``.cache``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]) / profile
    if profile == "full":
        return PROJECT_ROOT / "reports" / "models"
    return PROJECT_ROOT / ".cache" / "models" / profile


def profile_data(family: Family, profile: str):
    splits = family.load_data()
    if profile == "smoke":
        splits = splits.subsample(SMOKE_SIZES["train"], SMOKE_SIZES["val"])
    return splits


SEED_LISTS = ("seeds", "baseline_seeds")


def run_recipe(family: Family, profile: str, recipe: dict | None = None) -> dict:
    """The training settings of one run: the profile's recipe (or ``recipe``) less its
    seed lists."""
    recipe = family.recipe[profile] if recipe is None else recipe
    return {k: v for k, v in recipe.items() if k not in SEED_LISTS}


def config_key(family: Family, config: dict, profile: str, splits, seed: int,
               recipe: dict | None = None) -> str:
    return fingerprint({"family": family.name, "config": config, "profile": profile,
                        "recipe": run_recipe(family, profile, recipe), "data": splits.fingerprint,
                        "seed": seed, "format": FORMAT_VERSION})


def planned_entries(family: Family, profile: str, splits, recipe: dict | None = None) -> set[str]:
    """Cache entry names of every planned (config, seed) run under the profile's recipe,
    or under ``recipe`` (e.g. the superseded one)."""
    return {entry_name(family, c, config_key(family, c, profile, splits, s, recipe), s)
            for c, s in family.runs(profile)}


def entry_name(family: Family, config: dict, key: str, seed: int) -> str:
    return "-".join([family.name, *(slug(v) for v in config.values()), f"s{seed}", key[:8]])


@dataclass(frozen=True)
class TrainedModel:
    family: Family
    config: dict
    profile: str
    seed: int
    entry: Entry
    cache_hit: bool

    @property
    def path(self) -> Path:
        return self.entry.model_path

    @property
    def meta(self) -> dict:
        return self.entry.meta

    def load_keras(self):
        import keras
        return keras.saving.load_model(self.path, compile=False)


def _progress_callback(label: str, max_epochs: int):
    import keras

    class ProgressLine(keras.callbacks.Callback):
        """One line per epoch on stderr: loss, val_loss, seconds per epoch, ETA."""
        def on_train_begin(self, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            per_epoch = (time.perf_counter() - self.t0) / (epoch + 1)
            eta = per_epoch * (max_epochs - epoch - 1)
            print(f"[scratchnet] {label} epoch {epoch + 1}/{max_epochs} "
                  f"loss {logs.get('loss', float('nan')):.4f} val_loss {logs.get('val_loss', float('nan')):.4f} "
                  f"val_acc {logs.get('val_accuracy', float('nan')):.3f} "
                  f"{per_epoch:.0f}s/epoch ETA <= {eta / 60:.1f} min", file=sys.stderr, flush=True)
    return ProgressLine()


def learning_rate(recipe: dict, n_train: int):
    """Adam's learning rate: a constant, or linear warm-up then cosine decay to 0.

    ``schedule: "warmup_cosine"`` warms up from 0 over ``warmup_epochs`` to
    ``learning_rate`` and decays over the remaining ``epochs`` (in optimizer steps).
    """
    import keras

    if recipe.get("schedule", "constant") == "constant":
        return recipe["learning_rate"]
    if recipe["schedule"] != "warmup_cosine":
        raise ValueError(f"unknown learning-rate schedule {recipe['schedule']!r}")
    steps_per_epoch = -(-n_train // recipe["batch_size"])
    warmup = int(recipe["warmup_epochs"] * steps_per_epoch)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0, warmup_target=recipe["learning_rate"], warmup_steps=warmup,
        decay_steps=recipe["epochs"] * steps_per_epoch - warmup)


def class_weights(recipe: dict, y_train) -> dict | None:
    """``class_weight: "balanced"``: weights n / (k * n_c), so every class adds the same
    total loss (macro-F1 counts each class alike); None trains unweighted."""
    if recipe.get("class_weight") is None:
        return None
    from sklearn.utils.class_weight import compute_class_weight
    import numpy as np

    classes = np.unique(y_train)
    weights = compute_class_weight(recipe["class_weight"], classes=classes, y=y_train)
    return {int(c): float(w) for c, w in zip(classes, weights)}


def best_epoch(history: dict, min_epochs: int = 0, monitor: str = "val_loss") -> int | None:
    """1-based epoch whose weights early stopping restored: the first best ``monitor``
    value (lowest loss, highest accuracy) from epoch ``min_epochs`` on."""
    vals = history.get(monitor) or []
    if not vals:
        return None
    start = min(max(min_epochs - 1, 0), len(vals) - 1)
    sign = -1 if "acc" in monitor else 1
    return start + 1 + min(range(len(vals) - start), key=lambda i: sign * vals[start + i])


def set_tf_threads(n: int) -> int:
    """Run TensorFlow's ops on ``n`` intra-op (and ``n`` inter-op) threads in this process.

    Only possible before TensorFlow's runtime starts (the first op); afterwards the
    count is fixed for the process and this returns the count in force. A Dask
    worker calls it before its first run with its own ``--nthreads``, so two 1-thread
    workers share two cores without oversubscription."""
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == n:
        return n
    try:
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # the runtime is up: the count can no longer change
        pass
    return tf_threads()


def tf_threads() -> int:
    """TensorFlow's intra-op thread count in this process (0 means TensorFlow's default:
    one per core)."""
    import tensorflow as tf

    return int(tf.config.threading.get_intra_op_parallelism_threads())


def cpu_description() -> dict:
    """The CPU a run trained on. Not part of the cache key, but recorded because oneDNN
    picks its kernels by instruction set: the same key retrained on another CPU gives
    other bits (README, *Distributed training*)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == "model name":
                model = value.strip()
            elif name.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:  # not Linux: the model from platform is all there is
        pass
    return {"model": model, "cores": os.cpu_count(),
            "isa": [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]}


def train_to(out_dir: Path, family: Family, config: dict, profile: str, splits, label: str,
             seed: int, progress: bool = True) -> dict:
    """Train ``config`` with ``seed`` on ``splits``; save ``out_dir/model.keras``; return the metadata.

    The same code trains in-process (:func:`get_trained`) and on a Dask worker
    (:func:`experiments.cluster.worker.train_task`); ``progress=False`` drops the per-epoch lines."""
    recipe = run_recipe(family, profile)
    with private_python_random(seed):
        return _train_to(out_dir, family, config, profile, splits, label, seed, progress, recipe)


@contextmanager
def private_python_random(seed: int):
    """Keras draws the seed of every unseeded initializer, Dropout and random-augmentation
    layer from Python's *process-global* ``random`` (``make_default_seed``).  Any other
    thread of the process that draws from it in the meantime changes the model: a Dask
    worker's own threads do, so the same run trained twice on a worker gave two different
    models.  Inside this block Keras draws from a private ``random.Random(seed)`` instead,
    which yields exactly the numbers ``random.seed(seed)`` gives the global generator (as
    ``keras.utils.set_random_seed`` seeds it) when nothing else draws: the same models as
    before in a quiet process, and the same models on a worker."""
    from keras.src.random import seed_generator

    saved = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)
    try:
        yield
    finally:
        seed_generator.python_random = saved


def _train_to(out_dir: Path, family: Family, config: dict, profile: str, splits, label: str,
              seed: int, progress: bool, recipe: dict) -> dict:
    import keras

    keras.utils.set_random_seed(seed)
    model = family.build_model(config, splits)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate(recipe, len(splits.y_train))),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    callbacks = [_progress_callback(label, recipe["epochs"])] if progress else []
    if recipe.get("patience"):
        # start_from_epoch: the weights of the first epochs, near the initialization, can
        # never be the ones restored (an early-stopping artefact, not a trained model).
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=recipe.get("monitor", "val_loss"), patience=recipe["patience"],
            restore_best_weights=True, start_from_epoch=recipe.get("min_epochs", 0)))
    start = time.perf_counter()
    history = model.fit(splits.x_train, splits.y_train, validation_data=(splits.x_val, splits.y_val),
                        epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                        class_weight=class_weights(recipe, splits.y_train),
                        callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    model.optimizer = None  # the optimizer state is not needed for inference: keep files lean
    model.save(out_dir / MODEL_FILE)
    deflate_zip(out_dir / MODEL_FILE)  # keeps the committed models lean
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    val_loss = hist.get("val_loss", [])
    best = (best_epoch(hist, recipe.get("min_epochs", 0) + 1, recipe.get("monitor", "val_loss"))
            if recipe.get("patience") else len(val_loss))
    return {"family": family.name, "config": config, "profile": profile, "seed": seed,
            "recipe": recipe, "data_source": splits.source, "data_fingerprint": splits.fingerprint,
            "split_sizes": splits.sizes(), "epochs": len(hist["loss"]),
            "best_epoch": best, "best_val_loss": val_loss[best - 1] if best else None,
            "history": hist, "train_seconds": round(seconds, 2), "params": int(model.count_params()),
            "keras_version": keras.__version__, "tf_intra_op_threads": tf_threads(),
            "cpu": cpu_description(), "created": time.time()}


def get_trained(family: Family, config: dict, profile: str, seed: int, *, retrain: bool = False,
                retrain_since: float | None = None, allow_train: bool = True) -> TrainedModel:
    """The model of ``config`` trained with ``seed``: from the cache, or trained now and cached.

    ``retrain`` ignores the cache; ``retrain_since`` (a timestamp) ignores only entries
    created before it, so parallel workers retrain a shared model once.
    """
    splits = profile_data(family, profile)
    key = config_key(family, config, profile, splits, seed)
    name = entry_name(family, config, key, seed)
    cache = ModelCache(cache_root(profile))

    def build(tmp: Path) -> dict:
        print(f"[scratchnet] training {name} on {splits.source}", file=sys.stderr, flush=True)
        return train_to(tmp, family, config, profile, splits, name, seed)

    if not allow_train:
        # read-only: no lock, so a model being trained by another process (which holds
        # its lock for the whole training) does not block verification; entries appear
        # atomically (rename), so a reader sees a whole entry or none
        entry = cache.load(name, key)  # a corrupt entry raises CorruptEntry: an error, not a skip
        if entry is None:
            raise MissingModel(
                f"{name} ({profile} profile) is not in {cache.root} and training is disabled "
                f"here. Run `make report` (or `python -m experiments train --profile {profile}`) "
                "to train it, then commit reports/models/.")
        return TrainedModel(family, config, profile, seed, entry, True)
    entry, hit = cache.get_or_build(name, key, build, force=retrain, stale_before=retrain_since)
    return TrainedModel(family, config, profile, seed, entry, hit)
