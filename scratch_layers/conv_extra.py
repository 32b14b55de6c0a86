"""Transposed, separable and depthwise-multiplier convolutions, cropping and upsampling (forward and backward)."""

LAYERS = {}  # Keras class name -> constructor, merged into registry.REGISTRY
