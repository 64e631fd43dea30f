"""What a model is: its columns and their kinds, the target and its task, the LightGBM
parameters allowed, and the pyfunc model MLflow keeps (imported by every other part)."""
