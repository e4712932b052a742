"""Offline evaluation commands and metrics."""
