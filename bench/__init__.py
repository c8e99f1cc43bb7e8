"""Benchmarks of the CDP: CPU, AWS requests, request units and cost per event.

Run from the repository root, e.g. ``python -m bench.pipeline --events 100000``;
docs/benchmarks.md describes the method and the latest figures.
"""
