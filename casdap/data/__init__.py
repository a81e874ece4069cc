"""Data sets and transforms."""
