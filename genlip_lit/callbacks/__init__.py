"""Trainer plug-ins, each swappable from YAML (`trainer.callbacks`, or the CLI's `checkpoint.*` and `distributed.*`):
when to evaluate and where results go (the evaluations themselves are `genlip_lit.eval`; these callbacks are made
from its registry, and `Evaluate` runs any registered one by name), checkpoints, throughput, the process-group
timeout."""

from genlip_lit.callbacks.checkpoint import ResumableCheckpoint
from genlip_lit.callbacks.evaluation import (
    AttentionSink,
    CaptionSamples,
    EvalCallback,
    EvalResult,
    Evaluate,
    LinearProbe,
    PatchReadout,
    TransferProbe,
    ZeroShot,
    evaluation_callback,
)
from genlip_lit.callbacks.nonfinite import NonFiniteGuard
from genlip_lit.callbacks.process_group import ProcessGroupGuard
from genlip_lit.callbacks.throughput import Throughput

__all__ = [
    "AttentionSink",
    "CaptionSamples",
    "EvalCallback",
    "EvalResult",
    "Evaluate",
    "LinearProbe",
    "NonFiniteGuard",
    "PatchReadout",
    "ProcessGroupGuard",
    "ResumableCheckpoint",
    "Throughput",
    "TransferProbe",
    "ZeroShot",
    "evaluation_callback",
]
