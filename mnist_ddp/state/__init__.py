"""What a run keeps: snapshots and model files, the run folder, random streams."""
