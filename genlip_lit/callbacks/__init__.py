"""Trainer plug-ins, each swappable from YAML (`trainer.callbacks` or the CLI's `checkpoint.*`)."""
