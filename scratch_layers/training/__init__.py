"""Training from scratch: the loss, the backward walk over the graph, and optimizers."""
