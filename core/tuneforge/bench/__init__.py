"""Benchmarks: ``python -m tuneforge.bench.decode --help``."""
