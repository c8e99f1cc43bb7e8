"""Activation (issue 5): destinations, delivery, triggers and batch syncs."""
