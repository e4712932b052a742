"""Multi-step pipelines a command runs, built from the evaluation library (eval/) and Lightning: the streamed
full-dataset probe (`genlip probe-full`: probe_module.py, probe_data.py)."""
