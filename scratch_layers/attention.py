"""Attention layers and TimeDistributed (forward and backward)."""

LAYERS = {}  # Keras class name -> constructor, merged into registry.REGISTRY
