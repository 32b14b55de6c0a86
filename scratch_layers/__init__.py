"""scratch_layers: NumPy-only inference and training for trained Keras 3 models.

>>> import scratch_layers
>>> m = scratch_layers.load_model("model.keras")
>>> probs = m.predict(x)            # float64, same shape as keras_model.predict(x)
>>> loss, grads = m.loss_and_gradients(x, y)          # aligned with trainable_weights
>>> m.train_on_batch(x, y, scratch_layers.Adam())     # one Keras training step

Never imports TensorFlow or Keras (NumPy, h5py and threadpoolctl only).

Layout: ``layers/`` (one module per layer family and the registry), ``engine/`` (graph,
predict's plan and fusions, the Model), ``training/`` (loss, backward walk, optimizers),
``saving/`` (reading, hostile-file defences, writing), ``verify/`` (comparison with Keras
and the ``python -m scratch_layers verify`` command).
"""
from .blas import blas_info
from .engine.model import Model
from .errors import (
           InputError,
           ModelFileError,
           NoBackwardError,
           ScratchError,
           UnsupportedLayerError,
)
from .layers.registry import REGISTRY
from .saving.loading import load_model
from .training.optimizers import Adam
from .verify.compare import first_divergence

__all__ = ["load_model", "blas_info", "Model", "first_divergence", "REGISTRY", "Adam", "ScratchError",
           "InputError", "ModelFileError", "UnsupportedLayerError", "NoBackwardError"]
__version__ = "0.1.0"
