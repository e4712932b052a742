"""Checkpoint trust, the only place a checkpoint file is opened: reading with `weights_only` (loading.py resolves a
file, run directory or URL to one checkpoint), integrity (weights digests, finiteness, class-path vetting) and
the registry of the classes a checkpoint or config may name (registry.py)."""
