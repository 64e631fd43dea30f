"""How a model is made: the dataset read into a frame, and the training pipeline
(preparation, split, LightGBM, metrics) as a function of that frame."""
