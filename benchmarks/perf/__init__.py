"""Step-time and memory benchmark of the training step and its data path (run.py)."""
