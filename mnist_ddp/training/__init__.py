"""One rank's training: the trainer, the step, CUDA graphs, the stop guard."""
