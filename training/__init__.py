"""PyTorch side of bigtrain: models, Petastorm-to-PyTorch loading, the training loop and its distributed glue."""
