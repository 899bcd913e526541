"""Data sources and per-example transforms behind `train.input_pipeline`."""
