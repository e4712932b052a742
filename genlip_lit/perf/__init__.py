"""Performance arithmetic shared by training and planning: the FLOP counter (counting.py) and accelerators' peak
TFLOP/s and memory (devices.py), used by `callbacks.Throughput` and `genlip plan` alike."""
