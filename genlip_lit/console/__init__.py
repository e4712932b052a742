"""What the user reads: the `genlip_lit` logger and its one-line warnings (logs.py), progress bars, rich or plain
(progress.py), the one markdown/CSV table writer (tables.py) and what a run logged, read back (run_logs.py). A
floor: every layer may use it."""
