"""Multi-process strategies on CPU (2 gloo ranks through torch.distributed.run): DDP and FSDP2 train the same
model to the same weights, and both leave one checkpoint file the genlip tools read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, TESTS

WORKER = os.path.join(TESTS, "ddp_strategy_worker.py")


def _run(strategy: str, out) -> dict:
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", WORKER, strategy,
           str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads((out / "result.json").read_text())


@pytest.mark.slow
def test_ddp_and_fsdp2_train_to_the_same_weights(tmp_path) -> None:
    ddp = _run("ddp", tmp_path / "ddp")
    fsdp2 = _run("fsdp2", tmp_path / "fsdp2")
    assert ddp["step"] == fsdp2["step"] == 4
    assert ddp["sums"].keys() == fsdp2["sums"].keys()
    for name, value in ddp["sums"].items():
        assert fsdp2["sums"][name] == pytest.approx(value, rel=1e-4, abs=1e-4), name
