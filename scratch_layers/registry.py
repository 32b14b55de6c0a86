"""THE registry: Keras class name -> constructor ``(config, weights, class_name) -> Layer``.

Adding a layer = writing a small Layer subclass and one entry here."""
from . import attention, conv, conv_extra, core, layers_extra, merge, recurrent, text

# Layers that are the identity at inference time (training-only noise, augmentation,
# regularisation). Keras runs them with training=False inside predict().
_INFERENCE_NO_OPS = [
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
    "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization",
    "RandomFlip", "RandomTranslation", "RandomRotation", "RandomZoom",
    "RandomContrast", "RandomBrightness", "Identity",
]

REGISTRY = {name: core.NoOp for name in _INFERENCE_NO_OPS}
REGISTRY.update({
    "InputLayer": core.InputLayer,
    "Dense": core.Dense,
    "Activation": core.Activation,
    "ReLU": core.ReLU,
    "LeakyReLU": core.LeakyReLU,
    "ELU": core.ELU,
    "Softmax": core.Softmax,
    "BatchNormalization": core.BatchNormalization,
    "LayerNormalization": core.LayerNormalization,
    "Flatten": core.Flatten,
    "Reshape": core.Reshape,
    "Permute": core.Permute,
    "Rescaling": core.Rescaling,
    "Masking": core.Masking,
    "Embedding": core.Embedding,
    "Conv2D": conv.Conv2D,
    "Conv1D": conv.Conv1D,
    "DepthwiseConv2D": conv.DepthwiseConv2D,
    "MaxPooling2D": conv.MaxPooling2D,
    "AveragePooling2D": conv.AveragePooling2D,
    "MaxPooling1D": conv.MaxPooling1D,
    "AveragePooling1D": conv.AveragePooling1D,
    "GlobalAveragePooling2D": conv.GlobalAveragePooling2D,
    "GlobalMaxPooling2D": conv.GlobalMaxPooling2D,
    "GlobalAveragePooling1D": conv.GlobalAveragePooling1D,
    "GlobalMaxPooling1D": conv.GlobalMaxPooling1D,
    "ZeroPadding2D": conv.ZeroPadding2D,
    "SimpleRNN": recurrent.SimpleRNN,
    "LSTM": recurrent.LSTM,
    "GRU": recurrent.GRU,
    "Bidirectional": recurrent.Bidirectional,
    "TextVectorization": text.TextVectorization,
})
# modules that declare their own LAYERS table
for _module in (conv_extra, layers_extra, attention, merge):
    REGISTRY.update(_module.LAYERS)

# Layers we refuse with a specific explanation.
REFUSED = {
    "Lambda": "Lambda layers contain arbitrary Python code (serialized bytecode); "
              "scratch_layers never executes code from a model file. Replace the Lambda by "
              "a built-in layer and re-save the model.",
    "TFSMLayer": "TFSMLayer wraps a TensorFlow SavedModel, which cannot be read without TensorFlow.",
}
