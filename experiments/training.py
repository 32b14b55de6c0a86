"""Train one configuration of a family with Keras, or load it from the cache.

Every run is seeded with ``keras.utils.set_random_seed(family.seed)``; the model is
compiled with Adam and SparseCategoricalCrossentropy, trained with early stopping
on validation loss (best weights restored) and saved without optimizer state.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .cache import Entry, ModelCache, MODEL_FILE
from .profiles import SMOKE_SIZES
from .studies import Family, fingerprint, slug

CACHE_ENV = "SCRATCHNET_CACHE_DIR"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
FORMAT_VERSION = 1  # bump when the entry layout or training loop changes meaning


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


def config_key(family: Family, config: dict, profile: str, splits) -> str:
    return fingerprint({"family": family.name, "config": config, "profile": profile,
                        "recipe": family.recipe[profile], "data": splits.fingerprint,
                        "seed": family.seed, "format": FORMAT_VERSION})


def entry_name(family: Family, config: dict, key: str) -> str:
    return "-".join([family.name, *(slug(v) for v in config.values()), key[:8]])


@dataclass(frozen=True)
class TrainedModel:
    family: Family
    config: dict
    profile: str
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


def train_to(out_dir: Path, family: Family, config: dict, profile: str, splits, label: str) -> dict:
    """Train ``config`` on ``splits``; save ``out_dir/model.keras``; return the metadata."""
    import keras

    recipe = family.recipe[profile]
    keras.utils.set_random_seed(family.seed)
    model = family.build_model(config, splits)
    model.compile(optimizer=keras.optimizers.Adam(recipe["learning_rate"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    callbacks = [_progress_callback(label, recipe["epochs"])]
    if recipe.get("patience"):
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=recipe["patience"], restore_best_weights=True))
    start = time.perf_counter()
    history = model.fit(splits.x_train, splits.y_train, validation_data=(splits.x_val, splits.y_val),
                        epochs=recipe["epochs"], batch_size=recipe["batch_size"],
                        callbacks=callbacks, verbose=0)
    seconds = time.perf_counter() - start
    model.optimizer = None  # the optimizer state is not needed for inference: keep files lean
    model.save(out_dir / MODEL_FILE)
    hist = {k: [float(v) for v in vals] for k, vals in history.history.items()}
    val_loss = hist.get("val_loss", [])
    return {"family": family.name, "config": config, "profile": profile, "seed": family.seed,
            "recipe": recipe, "data_source": splits.source, "data_fingerprint": splits.fingerprint,
            "split_sizes": splits.sizes(), "epochs": len(hist["loss"]),
            "best_epoch": (val_loss.index(min(val_loss)) + 1) if val_loss else None,
            "history": hist, "train_seconds": round(seconds, 2), "params": int(model.count_params()),
            "keras_version": keras.__version__, "created": time.time()}


def get_trained(family: Family, config: dict, profile: str, *, retrain: bool = False,
                retrain_since: float | None = None, allow_train: bool = True) -> TrainedModel:
    """The trained model for ``config``: from the cache, or trained now and cached.

    ``retrain`` ignores the cache; ``retrain_since`` (a timestamp) ignores only entries
    created before it, so parallel workers retrain a shared model once.
    """
    splits = profile_data(family, profile)
    key = config_key(family, config, profile, splits)
    name = entry_name(family, config, key)
    cache = ModelCache(cache_root(profile))

    def build(tmp: Path) -> dict:
        if not allow_train:
            raise MissingModel(
                f"{name} ({profile} profile) is not in {cache.root} and training is disabled "
                f"here. Run `make report` (or `python -m experiments train --profile {profile}`) "
                "to train it, then commit reports/models/.")
        print(f"[scratchnet] training {name} on {splits.source}", file=sys.stderr, flush=True)
        return train_to(tmp, family, config, profile, splits, name)

    entry, hit = cache.get_or_build(name, key, build, force=retrain, stale_before=retrain_since)
    return TrainedModel(family, config, profile, entry, hit)
