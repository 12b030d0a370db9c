"""Benchmarks for textcl (run as modules, e.g. ``python -m benchmarks.speed encode``)."""
