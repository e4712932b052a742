"""Multi-step pipelines a single command runs, built from the evaluation library (eval/) and Lightning: the
streamed full-dataset probe (`genlip probe-full`: probe_module.py, probe_data.py), resolution sweeps
(`genlip eval-res`: resolution.py, resolution_io.py), the LLM probe (`genlip llm-probe`: llm_probe.py,
llm_loading.py), scene-caption scoring (`genlip caption-eval`: scene_captions.py) and comparison reports read
from TensorBoard logs (`genlip compare`: compare_report.py)."""
