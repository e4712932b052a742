"""Where files live: local paths and object-storage URLs (s3://, gs://, any fsspec URL) behind one set of
functions (paths.py), with the one JSON writer (atomic, NaN as null). A floor: data, ingest, checkpoints and
commands use it alike."""
