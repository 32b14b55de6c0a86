"""CIFAR-10 CNN family: conv-layer count, filters, kernel sizes, pooling."""
from __future__ import annotations

from ..data import load_cifar10
from ..studies import Family, Study

BASELINE = {"conv_layers": 3, "filters": (32, 64, 128), "kernel_sizes": (3, 3, 3), "pooling": "max"}


def _per_layer(values: tuple, n: int) -> tuple:
    """Per-layer settings for ``n`` layers; layers past the listed ones repeat the last."""
    return tuple(values[min(i, len(values) - 1)] for i in range(n))


def build_model(config: dict, splits=None):
    """RandomFlip -> n x [Conv2D(same, relu) -> 2x2 pool] -> Flatten -> Dense 128 -> Dense 10.

    Dropout and RandomFlip are training-only; at inference they are identity.
    """
    import keras
    from keras import layers

    n = config["conv_layers"]
    pool = {"max": layers.MaxPooling2D, "avg": layers.AveragePooling2D}[config["pooling"]]
    x = inputs = keras.Input((32, 32, 3), name="image")
    x = layers.RandomFlip("horizontal")(x)
    for f, k in zip(_per_layer(config["filters"], n), _per_layer(config["kernel_sizes"], n)):
        x = layers.Conv2D(f, k, padding="same", activation="relu")(x)
        x = pool(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(0.3)(x)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    outputs = layers.Dense(10, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="cifar_cnn")


FAMILY = Family(
    name="cnn",
    title="CNN on CIFAR-10",
    baseline=BASELINE,
    studies=(
        Study("conv_layers", "conv_layers", (2, 3, 4), "Number of conv layers",
              lambda v: f"{v} conv layers"),
        Study("filters", "filters", ((16, 32, 64), (32, 64, 128), (48, 96, 192)), "Filters per conv layer",
              lambda v: "filters " + "-".join(map(str, v))),
        Study("kernel_sizes", "kernel_sizes", ((3, 3, 3), (5, 3, 3), (5, 5, 5)), "Kernel size per conv layer",
              lambda v: "kernels " + "-".join(f"{k}x{k}" for k in v)),
        Study("pooling", "pooling", ("max", "avg"), "Pooling layer type",
              lambda v: {"max": "max pooling", "avg": "average pooling"}[v]),
    ),
    recipe={
        "full": {"epochs": 8, "batch_size": 128, "learning_rate": 1e-3, "patience": 2},
        "smoke": {"epochs": 1, "batch_size": 64, "learning_rate": 1e-3, "patience": 0},
    },
    load_data=load_cifar10,
    build_model=build_model,
)
