"""The model and what it is trained and scored with: MLP, noise, optimizer, precision, evaluation."""
