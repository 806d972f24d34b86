"""Metrics with uncertainty, slices, performance and changed examples."""
