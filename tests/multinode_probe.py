"""A test callback for the multi-node runs of test_multinode.py: what each rank trained on, and a fault on cue.

    --trainer.callbacks+=multinode_probe.RankProbe --trainer.callbacks+.out_dir=DIR   (tests/ on PYTHONPATH)

After every training step a rank writes DIR/rank<R>.json: "rank", "world_size", "node_rank", "environment" (the
cluster environment Lightning detected), "steps" (the sample keys of each step's batch), "grad_norms" (the L2 norm
of each step's gradient) and "vocab_size". With `fault` ("stop" = SIGSTOP, a frozen node; "kill" = SIGKILL, a
dead one) the rank `fault_rank` signals itself at the start of step `fault_step` (writing the time to
DIR/fault.time first), so its peers hang in, or lose, the step's collectives exactly as on a cluster.

`ReplayDataModule` is the one-process reference: it trains on the global batches such a run recorded (step k =
every rank's step-k samples), so its weights must equal the multi-rank run's.
"""

from __future__ import annotations

import json
import os
import signal
import time
from typing import Any

import lightning as L
import litdata
import torch

from genlip_lit.data.datamodule import BatchCollator, GenLIPDataModule

FAULTS = {"stop": signal.SIGSTOP, "kill": signal.SIGKILL}


class RankProbe(L.Callback):
    def __init__(self, out_dir: str, fault: str | None = None, fault_rank: int = 1, fault_step: int = 0) -> None:
        self.out_dir = out_dir
        self.fault, self.fault_rank, self.fault_step = fault, fault_rank, fault_step
        self.steps: list[list[str]] = []
        self.grad_norms: list[float] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if self.fault and trainer.global_rank == self.fault_rank and trainer.global_step == self.fault_step:
            os.makedirs(self.out_dir, exist_ok=True)
            with open(os.path.join(self.out_dir, "fault.time"), "w") as fh:  # the test times the survivors from here
                fh.write(repr(time.time()))
            os.kill(os.getpid(), FAULTS[self.fault])
        self.steps.append(list(batch.keys))

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: Any, optimizer: Any) -> None:
        # the gradient the optimizer gets (after DDP's all-reduce, before clipping): one L2 norm per step
        squares = sum(float(p.grad.double().pow(2).sum()) for p in pl_module.parameters() if p.grad is not None)
        self.grad_norms.append(squares**0.5)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node_rank": trainer.node_rank,
            "environment": type(getattr(trainer.strategy, "cluster_environment", None)).__name__,
            "steps": self.steps,
            "grad_norms": self.grad_norms,
            "vocab_size": pl_module.caption_encoder.tokenizer.vocab_size,
        }
        os.makedirs(self.out_dir, exist_ok=True)
        path = os.path.join(self.out_dir, f"rank{trainer.global_rank}.json")
        with open(path + ".tmp", "w") as fh:
            json.dump(record, fh)
        os.replace(path + ".tmp", path)


class ReplayDataModule(GenLIPDataModule):
    """GenLIPDataModule whose train loader yields the recorded global batches (`replay`: a JSON list, one list of
    sample keys per step), each sample decoded and augmented exactly as the streaming loader does."""

    def __init__(self, replay: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.replay = replay

    def train_dataloader(self) -> Any:
        with open(self.replay) as fh:
            steps = json.load(fh)
        raw = litdata.StreamingDataset(os.path.join(self.data_dir, "train"))
        index = {str(raw[i]["key"]): i for i in range(len(raw))}
        collate = BatchCollator(self._encoder(), self.image_size, self.mean, self.std)
        batches = [collate([self.train_dataset[index[key]] for key in keys]) for keys in steps]
        return torch.utils.data.DataLoader(batches, batch_size=None, collate_fn=lambda batch: batch)
