"""A course-style NumPy implementation of Keras' forward pass, as a scratchnet backend.

``load(path)`` reads a ``.keras`` file (zip + json + h5py) and returns a model with
``predict(x)`` and ``intermediate_outputs(x)``.  It does not use scratch_layers.
See README.md: which file to edit, and the command that checks it.
"""
from .model import load

__all__ = ["load"]
