"""Benchmarks: `python -m bench` (bench/__main__.py); figures in BENCHMARKS.md."""
