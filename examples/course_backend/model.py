"""The model: a chain of layers read from a ``.keras`` file, run one after the other.

Only chains: a ``Sequential`` model, or a ``Functional`` one whose layers each read the
output of the layer before (the study models).  The one side branch allowed is the
padding mask that Keras records as a ``NotEqual(ids, 0)`` node next to an
``Embedding(mask_zero=True)``; here the mask simply travels with the data, from the
Embedding through the recurrent layers to the average over time.  Anything else (a skip
connection, a merge, two inputs or outputs, a nested model, an unknown layer) raises
``NotImplementedError``: the verification suite reports the model as *refused*.
"""
from __future__ import annotations

import numpy as np

from . import cnn, lstm, rnn
from .keras_file import KerasFile, is_operation
from .text import TextVectorization

LAYERS = {**cnn.LAYERS, **rnn.LAYERS, **lstm.LAYERS}
RECURRENT = {"SimpleRNN": rnn.SimpleRNN, "LSTM": lstm.LSTM}   # weights under cell/vars
BATCH = 256   # items per forward pass: bounds the memory of the convolution's patches


def _source(tensor_arg) -> str | None:
    """The layer name a serialized Keras tensor comes from (None: not a single tensor)."""
    if isinstance(tensor_arg, dict) and tensor_arg.get("class_name") == "__keras_tensor__":
        return tensor_arg["config"]["keras_history"][0]
    return None


def _check_chain(config: dict) -> None:
    """Refuse any Functional graph that is not a chain (with its mask side branch)."""
    # one input or output is saved as ["name", 0, 0], several (or a dict) otherwise
    for what in ("input_layers", "output_layers"):
        ends = config[what]
        if not (isinstance(ends, list) and len(ends) == 3 and isinstance(ends[0], str)):
            raise NotImplementedError(f"graph model: {what} {str(ends)[:80]}; only one input and one "
                                      "output (a chain) are implemented")
    previous, masks = None, set()
    for entry in config["layers"]:
        name, nodes = entry["name"], entry.get("inbound_nodes", [])
        if entry["class_name"] == "InputLayer":
            if previous is not None:
                raise NotImplementedError("graph model: a second input; only chains are implemented")
            previous = name
            continue
        if len(nodes) != 1:
            raise NotImplementedError(f"graph model: layer {name!r} is called {len(nodes)} times; "
                                      "only chains are implemented")
        args, kwargs = nodes[0]["args"], nodes[0].get("kwargs", {})
        if entry["class_name"] == "NotEqual":   # the padding mask: ids != 0
            masks.add(name)
            continue
        if len(args) != 1 or _source(args[0]) != previous:
            raise NotImplementedError(f"graph model: layer {name!r} ({entry['class_name']}) does not read "
                                      f"the output of {previous!r} alone; only chains are implemented")
        if set(kwargs) - {"mask", "training"} or (kwargs.get("mask") is not None and _source(kwargs["mask"]) not in masks):
            raise NotImplementedError(f"graph model: layer {name!r} is called with {sorted(kwargs)}; "
                                      "only chains are implemented")
        previous = name
    if config["output_layers"][0] != previous:
        raise NotImplementedError(f"graph model: the output is {config['output_layers'][0]!r}, not the "
                                  f"last layer {previous!r}")


def _build(file: KerasFile, entry: dict):
    cls, config = entry["class_name"], entry["config"]
    if cls == "TextVectorization":
        return TextVectorization(config, file.asset(entry, "vocabulary.txt"))
    if cls == "Bidirectional":
        def half(key, sub):
            inner = config[key]
            if inner["class_name"] not in RECURRENT:
                raise NotImplementedError(f"Bidirectional over {inner['class_name']} is not implemented")
            return RECURRENT[inner["class_name"]](inner["config"], file.weights(entry, f"{sub}/cell"))
        return rnn.Bidirectional(config, half("layer", "forward_layer"), half("backward_layer", "backward_layer"))
    if cls in RECURRENT:
        return RECURRENT[cls](config, file.weights(entry, "cell"))
    if cls not in LAYERS:
        raise NotImplementedError(f"layer {cls} ({config.get('name')}) is not implemented in the course "
                                  f"backend (it has: {', '.join(sorted(LAYERS))}, Bidirectional, TextVectorization)")
    return LAYERS[cls](config, file.weights(entry))


class ChainModel:
    """``predict(x)`` and ``intermediate_outputs(x)`` of a chain of layers."""

    def __init__(self, path):
        file = KerasFile(path)
        kind = file.config.get("class_name")
        if kind not in ("Sequential", "Functional"):
            raise NotImplementedError(f"model class {kind!r}: only Sequential and Functional chains")
        if kind == "Functional":
            _check_chain(file.config["config"])
        self.layers = []   # (name, layer); the NotEqual mask node is kept as (name, None)
        for entry in file.layer_entries():
            if entry["class_name"] == "InputLayer":
                continue
            if entry["class_name"] in ("Sequential", "Functional"):
                raise NotImplementedError("graph model: a nested model; only chains are implemented")
            if is_operation(entry):
                if entry["class_name"] != "NotEqual":
                    raise NotImplementedError(f"operation {entry['class_name']} is not implemented")
                self.layers.append((entry["config"]["name"], None))
                continue
            self.layers.append((entry["config"]["name"], _build(file, entry)))
        first = self.layers[0][1] if self.layers else None
        # what the first layer reads: raw strings, token ids, or numbers computed in float64
        self.input_dtype = object if isinstance(first, TextVectorization) else \
            np.int64 if isinstance(first, rnn.Embedding) else np.float64

    def _run(self, x, keep_all: bool):
        x = np.asarray(x, dtype=self.input_dtype)
        outputs, mask = {}, None
        for name, layer in self.layers:
            if layer is None:   # NotEqual(ids, 0): the mask the Embedding made; recorded for comparison
                if mask is None:
                    raise NotImplementedError(f"operation {name!r}: a NotEqual that is not an Embedding's mask")
                outputs[name] = mask
                continue
            x, mask = layer.forward(x, mask)
            if keep_all:
                outputs[name] = x
        return outputs if keep_all else x

    def predict(self, x):
        """Class probabilities (N, classes), computed in float64, ``BATCH`` items at a time."""
        parts = [self._run(x[i:i + BATCH], keep_all=False) for i in range(0, len(x), BATCH)]
        return np.concatenate(parts) if parts else np.zeros((0,))

    def intermediate_outputs(self, x):
        """{layer name: its output}, in the order the layers run (Keras' node names)."""
        return self._run(x, keep_all=True)


def load(path):
    """The backend entry point: ``--backend examples.course_backend:load``."""
    return ChainModel(path)
