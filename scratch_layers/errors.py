"""Exception hierarchy of scratch_layers.

Everything raised on purpose by this package derives from :class:`ScratchError`
(itself a ``ValueError``, so generic ``except ValueError`` handlers keep working).
"""


class ScratchError(ValueError):
    """Base class of all errors raised by scratch_layers."""


class ModelFileError(ScratchError):
    """The model file is missing, truncated, corrupt, hostile (zip bomb, oversized or
    inconsistent weights, malformed config) or not a Keras model file."""


class UnsupportedLayerError(ScratchError):
    """A layer class, a layer option or a model topology is not supported.

    Deliberately not a ``NotImplementedError``: Python's ``zipfile`` raises that for an
    unknown compression method, and a broken file must never look like a missing feature."""


class InputError(ScratchError):
    """The array passed to ``predict`` does not fit the model (shape, dtype, values)."""


class NoBackwardError(UnsupportedLayerError):
    """``loss_and_gradients`` / ``train_on_batch`` reached a layer (or a layer option, or an
    activation) that has no backward pass in scratch_layers. Inference (``predict``) still
    works; the message names the layer and says what is supported."""
