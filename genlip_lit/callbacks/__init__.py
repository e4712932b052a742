"""Trainer plug-ins, each swappable from YAML (`trainer.callbacks`, or the CLI's `checkpoint.*` and `distributed.*`):
when to evaluate and where results go (the evaluations themselves are `genlip_lit.eval`), checkpoints, throughput,
the process-group timeout."""

from genlip_lit.callbacks.checkpoint import ResumableCheckpoint
from genlip_lit.callbacks.evaluation import (
    AttentionSink,
    CaptionSamples,
    EvalCallback,
    EvalResult,
    LinearProbe,
    PatchReadout,
    TransferProbe,
    ZeroShot,
)
from genlip_lit.callbacks.nonfinite import NonFiniteGuard
from genlip_lit.callbacks.process_group import ProcessGroupGuard
from genlip_lit.callbacks.throughput import Throughput

__all__ = [
    "AttentionSink",
    "CaptionSamples",
    "EvalCallback",
    "EvalResult",
    "LinearProbe",
    "NonFiniteGuard",
    "PatchReadout",
    "ProcessGroupGuard",
    "ResumableCheckpoint",
    "Throughput",
    "TransferProbe",
    "ZeroShot",
]
