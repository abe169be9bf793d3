"""Hyperparameter tuning: MacKay EM, its checkpoints, and grid search on held-out data."""
