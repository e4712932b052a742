"""`ProcessGroupGuard`: multi-process runs never hang silently, and a lost peer ends a rank with one line.

    distributed:            # genlip fit's YAML key (always present, like checkpoint.*)
      timeout: 600          # seconds a collective (gradient all-reduce, barrier) waits for the other ranks

Lightning's strategies give torch.distributed 30 minutes by default; for a frozen node (SIGSTOP, a hung
filesystem, a GPU stuck in a kernel) that is half an hour of every other node waiting without a word. `timeout`
is handed to the strategy's process group (DDP, FSDP, FSDP2: their `timeout` argument, which it replaces) before
the group is created. When a collective then fails (a peer frozen past the timeout, or a peer killed: its
connections close), each surviving rank writes the traceback to `RUN_DIR/rank<R>-error.log` and `genlip` prints
one line naming the rank, the step, what happened, the last checkpoint and how to resume (exit code 1). A node
that never joins the rendezvous is reported the same way after the timeout. On GPUs NCCL's watchdog enforces the
same timeout by aborting the process (its own message), since a hung NCCL kernel cannot raise.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from typing import Any

import lightning as L
import torch

from genlip_lit.errors import GenLIPUserError

DEFAULT_TIMEOUT_S = 600.0

# Messages of collectives whose peer went away (gloo, NCCL, the c10d store), and of those that waited too long.
_CLOSED = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
           "remote worker crash", "nccl communicator was aborted", "socket closed", "recvbytes", "sendbytes")
_TIMED_OUT = ("timed out", "timeout")  # also "Application timeout caused pair closure", NCCL's watchdog


def _raised_by_a_collective(exc: BaseException) -> bool:
    """The exception left torch.distributed (or DDP's own broadcasts): its messages vary by backend and version
    ("Timed out waiting 5000ms for recv", "Application timeout caused pair closure", ...), where it came from
    does not."""
    tb = exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
        if "/torch/distributed/" in name or name.endswith("/torch/nn/parallel/distributed.py"):
            return True
        tb = tb.tb_next
    return False


def peer_failure(exc: BaseException) -> str | None:
    """'join' (not every rank arrived), 'timeout' or 'closed' when `exc` is a collective or rendezvous that lost
    its peers; None for any other error."""
    text = str(exc).lower()
    distributed = (isinstance(exc, getattr(torch.distributed, "DistError", ())) or _raised_by_a_collective(exc)
                   or any(word in text for word in ("gloo", "nccl", "c10d", "processgroup", "store", "peer", "pair")))
    if not distributed:
        return None
    if "waiting for clients" in text:  # the rendezvous: some node never started (or cannot reach MASTER_ADDR)
        return "join"
    if any(word in text for word in _TIMED_OUT):
        return "timeout"
    if any(word in text for word in _CLOSED):
        return "closed"
    return None


class ProcessGroupGuard(L.Callback):
    """The process-group timeout (`apply_to` the strategy before fit) and the one-line report of a lost peer."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
            raise GenLIPUserError(f"distributed.timeout must be a number of seconds > 0, got {timeout!r}")
        self.timeout = float(timeout)

    def apply_to(self, strategy: Any) -> None:
        """Set the timeout of the process group the strategy is about to create (strategies without one, a
        single device, are left alone)."""
        if hasattr(strategy, "_timeout"):  # DDPStrategy, FSDPStrategy, ModelParallelStrategy keep it here
            strategy._timeout = timedelta(seconds=self.timeout)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        kind = peer_failure(exception) if trainer.world_size > 1 else None
        if kind is None:
            return
        run_dir = _run_dir(trainer)
        log_file = os.path.join(run_dir, f"rank{trainer.global_rank}-error.log")
        try:
            os.makedirs(run_dir, exist_ok=True)
            with open(log_file, "w", encoding="utf-8") as fh:
                fh.write("".join(traceback.format_exception(exception)))
        except OSError:
            log_file = ""
        exception.genlip_line = self.line(trainer, kind, log_file)  # type: ignore[attr-defined]

    def line(self, trainer: L.Trainer, kind: str, log_file: str) -> str:
        where = (f"rank {trainer.global_rank} of {trainer.world_size} (node {trainer.node_rank}) stopped at step "
                 f"{trainer.global_step}")
        if kind == "join":
            what = (f"not every rank joined within distributed.timeout ({self.timeout:g} s): start every node with "
                    "the same MASTER_ADDR, MASTER_PORT and node count, reachable from each other")
        elif kind == "timeout":
            what = (f"no answer from the other ranks within distributed.timeout ({self.timeout:g} s): a node is "
                    "frozen or stalled (raise the timeout for slow steps or filesystems)")
        else:
            what = "a peer rank closed its connection: it crashed or was killed (see that node's own log)"
        ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") or ""
        resume = (f"last checkpoint {ckpt}: relaunch all nodes with --ckpt_path {ckpt}" if ckpt and os.path.isfile(ckpt)
                  else "no checkpoint was written yet")
        traceback_note = f"; traceback in {log_file}" if log_file else ""
        return f"{where}: {what}; {resume}{traceback_note}"


def _run_dir(trainer: L.Trainer) -> str:
    """The run directory (above checkpoints/, the same on every rank: Lightning broadcasts it from rank 0); before
    it is known (a rank that never joined), the logger's folder above the runs, else `default_root_dir`."""
    dirpath = getattr(trainer.checkpoint_callback, "dirpath", None)
    if dirpath:
        return os.path.dirname(os.path.abspath(dirpath)) if os.path.basename(dirpath) == "checkpoints" else dirpath
    root = getattr(getattr(trainer, "logger", None), "root_dir", None)
    return root if isinstance(root, str) else trainer.default_root_dir
