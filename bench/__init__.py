"""Benchmarks of evolution-listener (`make bench`): reports figures, never asserts timings."""
