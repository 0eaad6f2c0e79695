"""Observing a run: metrics log, progress display, memory measurement."""
