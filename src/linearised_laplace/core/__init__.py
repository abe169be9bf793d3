"""Foundations with no knowledge of networks: checks, progress, seeds, linear algebra, files."""
