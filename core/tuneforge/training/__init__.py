"""Training: the shared setup every method uses, the trainer, the output directory."""
