"""Model files: reading (no pickle, no code execution), hostile-file defences, writing."""
