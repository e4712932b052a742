"""What training reads, knowing no model: the shared `Batch` (batch.py), tokenizers, image transforms and the
preprocessing a checkpoint records, packing of native-resolution samples into rows, the embedded synthetic scenes
(synthetic.py, world.py), the litdata shards and their streaming loader, and the data module that connects them
to a model (datamodule.py)."""
