"""Detectors (filled in by the curves work)."""
