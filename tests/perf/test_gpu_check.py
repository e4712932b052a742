"""benchmarks/gpu_check.py in its CPU mode, without litdata / open_clip / jsonargparse (as on the GPU machine):
every check runs on shrunk shapes and agrees, so the GPU script cannot rot."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# the GPU machine has torch, lightning, timm and torchmetrics only: importing anything else fails in the child
WITHOUT_OPTIONAL_PACKAGES = """
import importlib.abc, runpy, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("litdata", "open_clip", "jsonargparse"):
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")
sys.meta_path.insert(0, Missing())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_gpu_check_runs_on_cpu(tmp_path) -> None:
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "GENLIP_CACHE": str(tmp_path / "cache")}
    script = os.path.join(ROOT, "benchmarks", "gpu_check.py")
    done = subprocess.run([sys.executable, "-c", WITHOUT_OPTIONAL_PACKAGES, script, "--cpu", "--json", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["check"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {
        "FlexAttention head dim 72", "flex packed vs SDPA (dense mask)", "flex zero-padded to 128 vs SDPA (dense mask)",
        "stage 1", "stage 1, compiled blocks", "non-finite guard on vs off", "stage 2 packed",
        "LM-head CE, plain vs chunked", "KV-cache captioning", "full probe step",
    }
    assert rows["stage 1, compiled blocks"]["status"] == "n/a"  # compiling on CPU would take minutes
    assert all(r["status"] == "ok" for name, r in rows.items() if name != "stage 1, compiled blocks")
    # the planned count and the Throughput callback's count of the real step agree (the status checks it)
    assert "GFLOP/sample planned, Throughput counted" in rows["stage 1"]["result"]
    assert re.fullmatch(r"on [\d,.]+ samples/s, off [\d,.]+ samples/s: [+-][\d.]+%",
                        rows["non-finite guard on vs off"]["result"])
    assert "images/s per CPU worker" in rows["full probe step"]["result"]  # the probe's step and decode rates
