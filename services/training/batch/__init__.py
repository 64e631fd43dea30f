"""Batch scoring: a stored dataset's rows through a registered model version, record
batch by record batch, into a Parquet file stored as a new dataset."""
