"""Activations-as-layers, preprocessing and shape layers the graphs need (forward and backward)."""

LAYERS = {}  # Keras class name -> constructor, merged into registry.REGISTRY
