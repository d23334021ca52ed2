"""Benchmark scripts (not part of the installed library)."""
