"""The ``onnxruntime`` backend: Keras' own ONNX export (:mod:`experiments.onnx_export`), run by
ONNX Runtime's CPU provider, as an implementation under test (see
:mod:`scratch_layers.verify.backends`).

A model the export cannot take is *refused* with the exporter's reason
(:class:`ExportRefused`): text models (``TextVectorization`` takes strings, which the
export does not cover), models with several inputs or outputs (:class:`OrtModel` feeds
one array and returns one), and whatever tf2onnx fails on.  ONNX Runtime computes in
float32, so it is held to float32 Keras' tolerance and its distance to the float64 twin
is reported beside scratch_layers'.
"""
from __future__ import annotations

import tempfile
from pathlib import Path


class ExportRefused(Exception):
    """Keras' ONNX export (or this backend's single-tensor runner) cannot take the model."""


def load(path):
    import keras

    from .onnx_export import export

    keras_model = keras.saving.load_model(path, compile=False, safe_mode=True)
    inputs, outputs = keras_model.inputs, keras_model.outputs
    if len(inputs) != 1 or len(outputs) != 1:
        raise ExportRefused(f"{len(inputs)} inputs and {len(outputs)} outputs: this backend runs "
                            "single-input, single-output models")
    if "string" in str(inputs[0].dtype):
        raise ExportRefused("the input is strings (TextVectorization), which Keras' ONNX export "
                            "does not cover")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            onnx_path = export(keras_model, Path(tmp) / "model.onnx")
        except Exception as exc:  # noqa: BLE001 - the exporter's own reason is the refusal
            raise ExportRefused(f"Keras' ONNX export failed: {type(exc).__name__}: "
                                f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}") from exc
        return _ort_model(onnx_path)   # the session holds the graph; the file may go


def _ort_model(path):
    """:class:`OrtModel` fed in its input's own type (int ids stay ints, not float32)."""
    import numpy as np

    from .onnx_export import OrtModel

    model = OrtModel(path)
    feeds = [i.name for i in model.session.get_inputs()]
    if len(feeds) != 1:   # e.g. a keras.ops.arange in the graph exported as a second input
        raise ExportRefused(f"the exported ONNX graph has {len(feeds)} inputs {feeds} for the model's one")
    onnx_type = model.session.get_inputs()[0].type        # e.g. "tensor(float)", "tensor(int32)"
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int32)": np.int32,
             "tensor(int64)": np.int64}.get(onnx_type)
    if dtype is None:
        raise ExportRefused(f"the exported model's input is {onnx_type}, which this backend does not feed")
    run = model.session.run

    def predict(x):
        x = np.asarray(x, dtype)
        return np.concatenate([run(None, {model.input: x[i:i + model.batch]})[0]
                               for i in range(0, len(x), model.batch)])
    model.predict = predict
    return model


load.refuses = (ExportRefused,)
load.precision = "float32"
