"""Detectors (filled in by the layers work)."""
