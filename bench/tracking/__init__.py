"""MLflow tracking: store (the only MLflow client), schema (every name), records (what each task logs)."""
