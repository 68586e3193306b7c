"""Scheduled batch pipelines: stages (bigtrain subcommands) run in order under a lock, with a run history."""
