"""One rank of a tiny `genlip fit` under a multi-process strategy (run by test_strategies.py through
`python -m torch.distributed.run --standalone --nproc_per_node=2`, gloo on CPU, as a user would launch it).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_strategy_worker.py ddp OUT_DIR

Rank 0 then reloads the single-file checkpoint and writes each parameter's sum and the final step to
OUT_DIR/result.json, so the test can compare strategies.
"""

from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from helpers import tiny_fit_args  # noqa: E402

from genlip_lit.cli import main  # noqa: E402

STRATEGY_CONFIGS = {"ddp": "experiments/scale/ddp.yaml", "fsdp2": "experiments/scale/fsdp2.yaml"}


def run(strategy: str, out: str) -> None:
    args = tiny_fit_args(out, max_steps=4)
    args = args[:3] + ["--config", STRATEGY_CONFIGS[strategy]] + args[3:] + [
        "--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.precision=32-true",
        "--data.init_args.batch_size=8", "--data.init_args.val_batch_size=8", "--data.init_args.drop_last=true",
    ]
    if strategy == "fsdp2":
        args += ["--trainer.strategy.init_args.data_parallel_size=2"]
    assert main(args) == 0
    if int(os.environ.get("RANK", "0")) == 0:
        from glob import glob

        from genlip_lit.checkpoints.loading import load_checkpoint

        (last,) = glob(f"{out}/runs/*/version_*/checkpoints/last.ckpt")
        module, _ = load_checkpoint(last)
        step = int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])
        sums = {k: float(v.double().sum()) for k, v in module.state_dict().items() if v.is_floating_point()}
        with open(os.path.join(out, "result.json"), "w") as f:
            json.dump({"step": step, "sums": sums}, f)


if __name__ == "__main__":
    run(sys.argv[1], sys.argv[2])
