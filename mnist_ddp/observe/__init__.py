"""What a run shows: metrics, figures, wandb, per-rank timing, profiles."""
