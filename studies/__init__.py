"""Optuna searches over ModelConfig knobs (python -m studies)."""
