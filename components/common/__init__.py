"""Helpers shared by every component (copied into each component image)."""
