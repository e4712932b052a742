"""`genlip optimize` for real corpora: readers per layout, per-sample cleaning, the resumable shard writer, a demo corpus."""
