"""Predict and the registry reads of TrainerService: the catalog of models, the loaded
model cache and alias resolution."""
