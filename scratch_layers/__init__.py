"""scratch_layers: NumPy-only inference for trained Keras 3 models.

>>> import scratch_layers
>>> m = scratch_layers.load_model("model.keras")
>>> probs = m.predict(x)            # float64, same shape as keras_model.predict(x)
>>> loss, grads = m.loss_and_gradients(x, y)          # aligned with trainable_weights
>>> m.train_on_batch(x, y, scratch_layers.Adam())     # one Keras training step

Never imports TensorFlow or Keras (NumPy + h5py only).
"""
from ._blas import blas_info
from .errors import (InputError, ModelFileError, NoBackwardError, ScratchError,
                     UnsupportedLayerError)
from .loading import load_model
from .model import Model, first_divergence
from .registry import REGISTRY
from .training import Adam

__all__ = ["load_model", "blas_info", "Model", "first_divergence", "REGISTRY", "Adam", "ScratchError",
           "InputError", "ModelFileError", "UnsupportedLayerError", "NoBackwardError"]
__version__ = "0.1.0"
