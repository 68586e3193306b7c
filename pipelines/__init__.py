"""Spark side of bigtrain: pure DataFrame transforms, schemas, and the module that owns reading and writing."""
