"""Helpers for tests, benchmarks and the load generator."""
