"""Serving benchmarks (`make bench-serve`)."""
