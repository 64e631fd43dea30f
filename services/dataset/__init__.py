"""The Dataset service: stores uploaded CSV files and serves them, typed, to the Trainer."""
