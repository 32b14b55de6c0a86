"""Keras models as ONNX Runtime sessions: the engine Keras models are often deployed on.

``keras_model.export(path, format="onnx")`` (Keras 3, through tf2onnx on the TensorFlow
backend) cannot export the CIFAR models as saved: their RandomFlip / RandomTranslation
layers trace to ``StatelessRandomUniformV2`` and ``ImageProjectiveTransformV3``, which
tf2onnx does not support.  Those layers are the identity at inference, so
:func:`inference_model` rebuilds the model without them (same layer objects, same
weights) and that is what is exported.  A model without such layers (the
``keras.applications`` graphs) is exported as it is, by :func:`export_model`.  Text
models are not exported: their ``TextVectorization`` takes strings, which the ONNX
export does not cover.

:class:`OrtModel` runs the exported file with the CPU provider and default session
options: ``intra_op_num_threads=0``, i.e. ONNX Runtime's own thread pool with one thread
per physical core, and parallel execution of independent nodes off (sequential mode).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ORT_BATCH = 256   # items per InferenceSession.run call (the whole split at once would hold GBs)
TRAINING_ONLY = ("RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast",
                 "RandomCrop", "RandomBrightness")


def training_only_layers(keras_model) -> list[str]:
    """Names of the augmentation layers in ``keras_model``, nested models included."""
    found = []
    for layer in getattr(keras_model, "layers", []):
        if layer.__class__.__name__ in TRAINING_ONLY:
            found.append(layer.name)
        found += training_only_layers(layer)
    return found


def inference_model(keras_model):
    """``keras_model`` without its training-only augmentation layers, rebuilt as a
    Sequential from its layers in order: right for a linear stack only (the study CNN,
    functional but linear), not for a graph with branches."""
    import keras
    layers = [l for l in keras_model.layers if l.__class__.__name__ != "InputLayer"]
    keep = [l for l in layers if l.__class__.__name__ not in TRAINING_ONLY]
    model = keras.Sequential([keras.Input(keras_model.input_shape[1:])] + keep, name=keras_model.name + "_inference")
    model.predict(np.zeros((1,) + tuple(keras_model.input_shape[1:]), "float32"), verbose=0)  # export needs a call
    return model


def export_model(keras_model, path: Path) -> Path:
    """Export any model (Sequential or functional) as it is; it must hold no augmentation
    layer (:func:`inference_model` drops those from a linear stack).  Calls the model once
    on zeros first: Keras refuses to export a model that has never been called."""
    extra = training_only_layers(keras_model)
    if extra:
        raise ValueError(f"{keras_model.name} holds training-only layers {extra}, which tf2onnx cannot "
                         "convert: export inference_model(model) instead (linear stacks only)")
    keras_model(np.zeros((1,) + tuple(keras_model.input_shape[1:]), "float32"), training=False)
    keras_model.export(str(path), format="onnx", verbose=False)
    return Path(path)


def export(keras_model, path: Path) -> Path:
    """Export a model: one with augmentation layers (a study CNN, a linear stack) rebuilt
    without them by :func:`inference_model`, any other as it is (:func:`export_model`)."""
    if training_only_layers(keras_model):
        keras_model = inference_model(keras_model)
    return export_model(keras_model, path)


class OrtModel:
    """``predict(x)`` over an exported model with ONNX Runtime's CPU provider (default
    session options: ONNX Runtime's thread pool, one thread per physical core)."""

    def __init__(self, path: Path, batch: int = ORT_BATCH):
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.batch = batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self.session.run(None, {self.input: x[i:i + self.batch]})[0]
                               for i in range(0, len(x), self.batch)])
