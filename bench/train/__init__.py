"""Training: optimiser and schedule, checkpoints, the stage-1 loop."""
