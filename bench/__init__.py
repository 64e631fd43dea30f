"""Benchmarks that print a table (`make bench`)."""
