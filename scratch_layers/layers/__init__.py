"""Layers: one module per family, as in ``keras/src/layers``, and the registry that maps
Keras class names to them. Layers know neither the graph nor the engine."""
