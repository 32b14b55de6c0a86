"""The CNN baseline as an ONNX Runtime session: the engine Keras models are often deployed on.

``keras_model.export(path, format="onnx")`` (Keras 3, through tf2onnx on the TensorFlow
backend) cannot export the CIFAR models as saved: their RandomFlip / RandomTranslation
layers trace to ``StatelessRandomUniformV2`` and ``ImageProjectiveTransformV3``, which
tf2onnx does not support.  Those layers are the identity at inference, so
:func:`inference_model` rebuilds the model without them (same layer objects, same
weights) and that is what is exported.  Text models are not exported: their
``TextVectorization`` takes strings, which the ONNX export does not cover.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

ORT_BATCH = 256   # items per InferenceSession.run call (the whole split at once would hold GBs)
TRAINING_ONLY = ("RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom", "RandomContrast",
                 "RandomCrop", "RandomBrightness")


def inference_model(keras_model):
    """``keras_model`` without its training-only augmentation layers (a linear stack only)."""
    import keras
    layers = [l for l in keras_model.layers if l.__class__.__name__ != "InputLayer"]
    keep = [l for l in layers if l.__class__.__name__ not in TRAINING_ONLY]
    model = keras.Sequential([keras.Input(keras_model.input_shape[1:])] + keep, name=keras_model.name + "_inference")
    model.predict(np.zeros((1,) + tuple(keras_model.input_shape[1:]), "float32"), verbose=0)  # export needs a call
    return model


def export(keras_model, path: Path) -> Path:
    inference_model(keras_model).export(str(path), format="onnx", verbose=False)
    return Path(path)


class OrtModel:
    """``predict(x)`` over an exported model with ONNX Runtime's CPU provider."""

    def __init__(self, path: Path, batch: int = ORT_BATCH):
        import onnxruntime as ort
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        self.batch = batch

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, np.float32)
        return np.concatenate([self.session.run(None, {self.input: x[i:i + self.batch]})[0]
                               for i in range(0, len(x), self.batch)])
