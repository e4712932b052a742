"""Planning a run on paper: counted FLOPs, memory per GPU, the micro-batch that fits, time and GPU-hours.

    genlip plan --config experiments/stage1_corpus.yaml --gpus 64 --gpu h100 --mfu 0.4 --samples 8e9

A library (no Lightning at import) over perf/ (the FLOP counter shared with the Throughput callback, GPU peaks and
memory): run_config.py (the `genlip fit` YAML, composed, defaults from the classes' signatures), objective.py (the
objective it names, any registered one, built on the meta device), trace.py (one step of it on the meta device),
memory.py (per-strategy memory model), logs.py (a previous run's measured MFU), estimate.py (the plan),
report.py (its text).
"""

from genlip_lit.perf.devices import GPUS, GPUSpec
from genlip_lit.plan.estimate import Plan, PlanRequest, make_plan
from genlip_lit.plan.report import format_plan, table_row
from genlip_lit.plan.run_config import RunConfig, read_run_config

__all__ = ["GPUS", "GPUSpec", "Plan", "PlanRequest", "RunConfig", "format_plan", "make_plan", "read_run_config",
           "table_row"]
