"""Batch inference on Spark executors with a trained checkpoint: the one layer that joins the Spark side and the
PyTorch side."""
