"""Benchmarks of vteller (see docs/benchmarks.md). ``python -m bench.media --help``."""
