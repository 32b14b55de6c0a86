"""scratch_layers: NumPy-only inference for trained Keras 3 models.

>>> import scratch_layers
>>> m = scratch_layers.load_model("model.keras")
>>> probs = m.predict(x)            # float64, same shape as keras_model.predict(x)

Never imports TensorFlow or Keras (NumPy + h5py only).
"""
from .errors import InputError, ModelFileError, ScratchError, UnsupportedLayerError
from .loading import load_model
from .model import Model, first_divergence
from .registry import REGISTRY

__all__ = ["load_model", "Model", "first_divergence", "REGISTRY", "ScratchError",
           "InputError", "ModelFileError", "UnsupportedLayerError"]
__version__ = "0.1.0"
