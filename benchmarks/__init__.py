"""Benchmarks of dask-grid against named anchors, each runnable with one command."""
