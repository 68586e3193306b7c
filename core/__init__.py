"""The base layer: config loading, errors with their exit codes, paths and URLs, atomic writes, logging, locks.
Imports nothing of the project; see ARCHITECTURE.md."""
