"""Reading a Keras 3 ``.keras`` file by hand: it is a zip archive holding

* ``config.json``: the architecture (a ``Functional`` or ``Sequential`` config, one entry
  per layer with its options);
* ``model.weights.h5``: the weights, one HDF5 group per layer, ``layers/<name>/vars/0``,
  ``vars/1``, ... in the order the layer created them (for an RNN layer under
  ``cell/vars``, for Bidirectional under ``forward_layer/cell/vars`` and
  ``backward_layer/cell/vars``);
* ``assets/``: e.g. a TextVectorization's ``vocabulary.txt``.

The ``<name>`` of a layer in the weights file is *not* its config name: it is the class
name in snake_case (``Conv2D`` -> ``conv2d``), with ``_1``, ``_2`` ... for the second,
third layer of the same class, counted in the order of the model's layers.
"""
from __future__ import annotations

import io
import json
import re
import zipfile

import h5py
import numpy as np


def snake_case(class_name: str) -> str:
    """Keras' ``to_snake_case``: ``GlobalAveragePooling1D`` -> ``global_average_pooling1d``."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def is_operation(entry: dict) -> bool:
    """A graph node that is an operation (e.g. ``NotEqual``), not a layer: it has no weights
    and no name in the weights file."""
    return str(entry.get("module", "")).startswith("keras.src.ops")


class KerasFile:
    """``config`` (the parsed config.json), ``weights(layer_entry, sub="")`` and ``asset(...)``."""

    def __init__(self, path):
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names or "model.weights.h5" not in names:
                raise ValueError(f"{path}: not a Keras 3 .keras file (config.json / model.weights.h5 missing)")
            self.config = json.loads(archive.read("config.json"))
            self._h5 = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
            self._assets = {n: archive.read(n) for n in names if n.startswith("assets/")}
        self._file_names = {}
        counts = {}
        for entry in self.layer_entries():
            if is_operation(entry):
                continue
            base = snake_case(entry["class_name"])
            n = counts.get(base, 0)
            counts[base] = n + 1
            self._file_names[entry["config"]["name"]] = base if n == 0 else f"{base}_{n}"

    def layer_entries(self) -> list[dict]:
        return self.config["config"]["layers"]

    def weights(self, entry: dict, sub: str = "") -> list[np.ndarray]:
        """The layer's variables in creation order (``sub`` e.g. ``"cell"``)."""
        group = self._h5["layers"][self._file_names[entry["config"]["name"]]]
        if sub:
            group = group[sub]
        variables = group["vars"]
        # float64 from the start: a float32 weight would make NumPy compute in float32
        return [np.asarray(variables[k], dtype=np.float64) for k in sorted(variables, key=int)]

    def asset(self, entry: dict, filename: str) -> bytes:
        return self._assets[f"assets/layers/{self._file_names[entry['config']['name']]}/{filename}"]
