"""The engine: the graph of layer calls, predict's plan with its fusions, and the Model."""
