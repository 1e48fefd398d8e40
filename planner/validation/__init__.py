"""Predictions checked against measured runs (runs) and papers' figures (paper_memory)."""
