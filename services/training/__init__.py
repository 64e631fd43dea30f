"""The Trainer: trains LightGBM models from datasets, logs them to MLflow, serves TrainerService."""
