"""Training: the trainer, checkpoints, and run_experiment (what run, ablate, studies and tests call)."""
