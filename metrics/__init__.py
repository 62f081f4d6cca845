"""Metric definitions and exposition. Imports nothing of ours."""
