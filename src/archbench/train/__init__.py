"""One training run: the epoch loop and training step, checkpoints, history and run-folder files."""
