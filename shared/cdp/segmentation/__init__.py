"""Segmentation: the definition language, time-bucketed aggregates and the evaluator (pure, no AWS)."""
