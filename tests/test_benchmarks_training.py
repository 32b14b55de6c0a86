"""Training-step speed, scratch vs Keras: one ``train_on_batch`` (forward, backward, Adam)
of each family's baseline on one batch of its training split (the recipe's batch size:
128 images, 32 texts), Keras float32 vs scratch float64 (the exact reference) and scratch
float32, in one session on the same machine; the report shows the ratio. No timing is
asserted.

Both sides train with Dropout active (each draws its own mask). The CNN's random
augmentation layers (RandomFlip, RandomTranslation) are left out on both sides: Keras
trains a model of the same layers without them, scratch runs with
``augmentation="identity"`` (it does not reproduce random augmentation).
"""
import pytest

import scratch_layers
from experiments.plugin import trained_or_skip
from experiments.report.records import record

pytestmark = [pytest.mark.bench, pytest.mark.slow]

AUGMENTATION = ("RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
                "RandomContrast", "RandomBrightness")


def keras_trainable_copy(keras_model):
    """The model's layers without random augmentation, compiled like the recipe
    (Adam, SparseCategoricalCrossentropy)."""
    import keras
    layers = [l for l in keras_model.layers[1:] if type(l).__name__ not in AUGMENTATION]
    if len(layers) == len(keras_model.layers) - 1:
        model = keras_model
    else:
        model = keras.Sequential([keras.Input(keras_model.input_shape[1:])] + layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy())
    return model


@pytest.fixture(scope="session")
def train_batch(pytestconfig, family, profile):
    tm = trained_or_skip(pytestconfig, family, family.baseline, profile)
    splits = family.load_data()
    n = family.recipe[profile]["batch_size"]
    return tm, splits.x_train[:n], splits.y_train[:n]


@pytest.mark.parametrize("impl", ["keras", "scratch", "scratch_float32"])
def test_training_step_speed(benchmark, train_batch, family, impl, request):
    tm, x, y = train_batch
    if impl == "keras":
        model = keras_trainable_copy(tm.load_keras())
        model.train_on_batch(x, y)  # builds the train function
        fn = lambda: model.train_on_batch(x, y)  # noqa: E731
    else:
        model = scratch_layers.load_model(tm.path, dtype="float32" if impl == "scratch_float32" else "float64")
        opt = scratch_layers.Adam(1e-3)
        data = list(x) if x.dtype == object else x
        fn = lambda: model.train_on_batch(data, y, opt, augmentation="identity")  # noqa: E731
    benchmark.group = f"{family.name}: one training step on {len(x)} training items"
    loss = benchmark.pedantic(fn, rounds=15, iterations=1, warmup_rounds=2)
    assert float(loss) > 0
    if benchmark.stats is not None:  # None under --benchmark-disable
        s = benchmark.stats.stats
        record(request, "bench_train", family=family.name, impl=impl, model=tm.entry.path.name,
               batch=len(x), mean=s.mean, median=s.median, min=s.min, rounds=s.rounds)
