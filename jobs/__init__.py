"""Thin entry points, one per thing a user launches; `bigtrain` is jobs.cli:main."""
