"""The dataset contract between the Spark side and the PyTorch side: the on-disk layout, the typed manifest, and
committed, verified snapshots. No Spark, no torch; see ARCHITECTURE.md."""
