"""Compatibility with upstream releases that predate the stack bigtrain runs on (``compat/petastorm.py``)."""
