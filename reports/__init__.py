"""Tables and plots for the paper from what MLflow holds (python -m reports)."""
