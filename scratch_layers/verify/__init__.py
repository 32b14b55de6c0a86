"""Verification: comparing scratch_layers with Keras node by node, and the CLI's table."""
