"""What the user reads on the terminal: the `genlip_lit` logger and its one-line warnings (logs.py) and progress
bars, rich or plain (progress.py). A floor: every layer may use it."""
