"""Multi-node training on one machine: 2 "nodes" x 1 process on 127.0.0.1 (gloo on CPU), started the ways a cluster
starts them: the torchrun recipe (experiments/scale/torchrun.sh: two torchrun agents, --nnodes 2 --node-rank K),
Lightning's own environment (MASTER_ADDR, MASTER_PORT, NODE_RANK, WORLD_SIZE: two plain processes) and the SLURM
recipe (experiments/scale/slurm.sbatch under a fake `srun` that starts 2 tasks with the variables srun sets).
The data: litdata shards of 48 train samples (one epoch = 6 steps of 2 ranks x 4) and a 20-sample val split.

- torchrun: the ranks' samples are disjoint and cover the epoch; the weights equal one process trained on the same
  global batches; both ranks build the compact vocabulary from all 48 captions; one checkpoint set; the 20-sample
  val split works with the default val batch (64).
- a killed node (SIGKILL): the other rank exits with one genlip line (traceback in the run dir); the SLURM recipe
  resumes from last.ckpt and ends on the torchrun run's samples and weights.
- a frozen node (SIGSTOP): the other rank gives up after distributed.timeout with one genlip line; last.ckpt loads.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from helpers import REPO, TESTS

from genlip_lit.data.shards import optimize_synthetic
from genlip_lit.data.synthetic import SceneConfig

pytestmark = pytest.mark.slow

CONFIG = "experiments/corpus_cpu.yaml"
NUM_TRAIN, NUM_VAL, BATCH, STEPS = 48, 20, 4, 6  # 48 / (2 ranks x 4) = 6 steps: one epoch
# distributed.timeout: generous where no peer freezes (on a loaded 2-core machine gloo took over 4 s just to connect
# the ranks), short enough to wait for where one does
TIMEOUT_S, FROZEN_TIMEOUT_S = 120, 15
_LAUNCH_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "NODE_RANK", "MASTER_ADDR",
                "MASTER_PORT", "GLOBAL_RANK", "NNODES", "TORCHELASTIC_RUN_ID")


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("multinode") / "data")
    scene = SceneConfig(image_size=32, patch_size=8)
    optimize_synthetic(out, num_train=NUM_TRAIN, num_val=NUM_VAL, seed=0, scene=scene)
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (a CI job may run under SLURM), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS and not k.startswith("SLURM_")}
    path = [REPO, TESTS] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    return {**env, "PYTHONPATH": os.pathsep.join(path), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **extra}


def _fit_args(data: str, out, steps: int = STEPS, probe: str = "ranks", *extra: str) -> list[str]:
    """`genlip fit` arguments after the config(s); in `extra`, later keys win (e.g. --distributed.timeout)."""
    return [
        "--data.init_args.data_dir", data, "--trainer.accelerator", "cpu", "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar",
        "false", "--trainer.logger.init_args.save_dir", f"{out}/runs", "--trainer.default_root_dir", str(out),
        "--trainer.callbacks", "[]", "--checkpoint.every_n_train_steps", "2", "--data.init_args.image_size", "32",
        "--data.init_args.batch_size", str(BATCH), "--distributed.timeout", str(TIMEOUT_S),
        "--trainer.callbacks+=multinode_probe.RankProbe", f"--trainer.callbacks+.out_dir={out}/{probe}", *extra,
    ]


class Nodes:
    """Processes started in their own sessions (a torchrun agent's workers included), all killed on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.ended: dict[int, float] = {}

    def start(self, cmd: list[str], log, env: dict[str, str]) -> None:
        with open(log, "w") as fh:
            self.procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def wait(self, which: list[int] | None = None, timeout: float = 300) -> list[int | None]:
        """Return codes of `which` (default all), polled so each exit time is known to ~0.1 s."""
        which = list(range(len(self.procs))) if which is None else which
        deadline = time.time() + timeout
        while time.time() < deadline and any(self.procs[i].poll() is None for i in which):
            for i in which:
                if i not in self.ended and self.procs[i].poll() is not None:
                    self.ended[i] = time.time()
            time.sleep(0.1)
        for i in which:
            if i not in self.ended and self.procs[i].poll() is not None:
                self.ended[i] = time.time()
        return [self.procs[i].poll() for i in which]

    def __enter__(self) -> Nodes:
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # works on a stopped process too
            except ProcessLookupError:
                pass
            proc.wait()


def _lightning_env_nodes(nodes: Nodes, data: str, out, *extra: str) -> None:
    """2 nodes as Lightning launches them itself: the same command on each, NODE_RANK telling them apart."""
    port = str(_free_port())
    for k in (0, 1):
        cmd = [sys.executable, "-m", "genlip_lit.cli", "fit", "--config", CONFIG, "--config",
               "experiments/scale/ddp.yaml", "--trainer.num_nodes", "2", "--trainer.devices", "1",
               *_fit_args(data, out, STEPS, "ranks", *extra)]
        env = _env(MASTER_ADDR="127.0.0.1", MASTER_PORT=port, NODE_RANK=str(k), WORLD_SIZE="2")
        nodes.start(cmd, out / f"node{k}.log", env)


def _ranks(out, probe: str = "ranks") -> list[dict]:
    return [json.loads((out / probe / f"rank{r}.json").read_text()) for r in (0, 1)]


def _weights(ckpt: str) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _print_timing(what: str, out, run: str, ended: float, log: str) -> float:
    """Print (pytest -s) how long after the fault rank 0 caught the error and exited, and its line."""
    fault = float((out / "ranks" / "fault.time").read_text())
    caught = os.path.getmtime(os.path.join(run, "rank0-error.log")) - fault
    print(f"{what}: rank 0 caught the error {caught:.1f} s and exited {ended - fault:.1f} s after the fault, "
          f"printing: {_error_lines(log)}")
    return ended - fault


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if line.startswith("genlip: error:")]


@pytest.fixture(scope="module")
def torchrun_run(shards, tmp_path_factory) -> dict:
    """The torchrun recipe on 2 nodes: one epoch, 6 steps."""
    out = tmp_path_factory.mktemp("torchrun")
    port = str(_free_port())
    with Nodes() as nodes:
        for k in (0, 1):
            env = _env(CONFIG=CONFIG, NNODES="2", NODE_RANK=str(k), MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                       NPROC_PER_NODE="1")
            nodes.start(["bash", "experiments/scale/torchrun.sh", *_fit_args(shards, out)], out / f"node{k}.log", env)
        codes = nodes.wait(timeout=300)
    logs = [(out / f"node{k}.log").read_text() for k in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    (run,) = glob.glob(f"{out}/runs/*/version_*")  # one run directory for both nodes
    return {"out": out, "run": run, "logs": logs, "ranks": _ranks(out)}


def test_torchrun_two_nodes_share_the_epoch_and_equal_one_process(torchrun_run, shards, tmp_path) -> None:
    ranks, logs = torchrun_run["ranks"], torchrun_run["logs"]
    assert [(r["rank"], r["node_rank"], r["world_size"]) for r in ranks] == [(0, 0, 2), (1, 1, 2)]
    assert {r["environment"] for r in ranks} == {"TorchElasticEnvironment"}
    # samples: disjoint between the ranks, and together one whole epoch
    assert all(len(r["steps"]) == STEPS and all(len(s) == BATCH for s in r["steps"]) for r in ranks)
    seen = [{key for step in r["steps"] for key in step} for r in ranks]
    assert not seen[0] & seen[1]
    assert seen[0] | seen[1] == {f"0/{i}" for i in range(NUM_TRAIN)}
    # the compact vocabulary (and the caption-coverage check) read every caption, on every rank
    for log in logs:
        assert f"from {NUM_TRAIN} of the {NUM_TRAIN} train captions" in log
        assert f"val batch 64 -> {NUM_VAL // 2}: each of the 2 ranks" in log  # 20 val samples, default batch
    assert ranks[0]["vocab_size"] == ranks[1]["vocab_size"]
    # one checkpoint set, written once
    checkpoints = sorted(os.listdir(os.path.join(torchrun_run["run"], "checkpoints")))
    assert checkpoints == ["last.ckpt", "step=2.ckpt", "step=4.ckpt", "step=6.ckpt"]
    last = os.path.join(torchrun_run["run"], "checkpoints", "last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == STEPS
    # one process trained on the same global batches (both ranks' step-k samples) reaches the same weights
    replay = tmp_path / "replay.json"
    replay.write_text(json.dumps([a + b for a, b in zip(ranks[0]["steps"], ranks[1]["steps"])]))
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    from genlip_lit.cli import main

    args = _fit_args(shards, tmp_path, STEPS, "reference")
    assert main(["fit", "--config", os.path.join(REPO, CONFIG), *args, "--data", "multinode_probe.ReplayDataModule",
                 f"--data.init_args.replay={replay}"]) == 0
    one = json.loads((tmp_path / "reference" / "rank0.json").read_text())
    assert one["steps"] == [a + b for a, b in zip(ranks[0]["steps"], ranks[1]["steps"])]
    assert one["vocab_size"] == ranks[0]["vocab_size"]
    # the gradient (after DDP's all-reduce) is the one-process gradient at every step: Adam alone would hide a
    # wrong scale; and the weights after 6 steps agree
    grads = max(abs(a - b) / b for a, b in zip(ranks[0]["grad_norms"], one["grad_norms"]))
    (reference,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    weights = _max_abs_diff(_weights(last), _weights(reference))
    print(f"2 nodes (torchrun) vs one process on the same global batches: gradient norms per step agree to "
          f"{grads:.1e} (relative), weights after {STEPS} steps to {weights:.1e} (max abs)")
    assert ranks[0]["grad_norms"] == ranks[1]["grad_norms"]  # DDP: the same averaged gradient on both ranks
    assert grads < 1e-5
    assert weights < 1e-4  # Adam's first steps move each weight by ~lr (2e-3) whatever the gradient's size


def test_killed_node_one_line_then_slurm_recipe_resumes(torchrun_run, shards, tmp_path) -> None:
    killed = tmp_path / "killed"
    killed.mkdir()
    with Nodes() as nodes:
        _lightning_env_nodes(nodes, shards, killed, "--trainer.callbacks+.fault=kill",
                             "--trainer.callbacks+.fault_step=3")
        codes = nodes.wait(timeout=300)
    log = (killed / "node0.log").read_text()
    assert codes == [1, -signal.SIGKILL], log[-3000:]
    (run,) = glob.glob(f"{killed}/runs/*/version_*")
    _print_timing("killed node (SIGKILL)", killed, run, nodes.ended[0], log)
    (line,) = _error_lines(log)
    assert "rank 0 of 2 (node 0) stopped at step 3: a peer rank closed its connection" in line
    last = os.path.join(run, "checkpoints", "last.ckpt")
    assert f"--ckpt_path {last}; traceback in {run}/rank0-error.log" in line
    assert "Traceback" not in log and "Traceback" in open(f"{run}/rank0-error.log").read()
    before_kill = _ranks(killed)
    assert before_kill[0]["environment"] == "LightningEnvironment"
    # Lightning's own launch deals the ranks the same samples as torchrun (steps 1-3, before the kill)
    assert [r["steps"] for r in before_kill] == [r["steps"][:3] for r in torchrun_run["ranks"]]

    # resume both nodes from last.ckpt (step 2) through the sbatch script, srun faked: 2 tasks on this machine
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text(
        "#!/usr/bin/env bash\n"
        "# fake srun: SLURM_NTASKS tasks of the command here, each with the variables srun sets\n"
        'while [[ "$1" == -* ]]; do shift; done\n'
        "pids=()\n"
        "for ((i = 0; i < SLURM_NTASKS; i++)); do\n"
        '  SLURM_PROCID=$i SLURM_LOCALID=0 SLURM_NODEID=$i "$@" > "$FAKE_SRUN_LOGS/task$i.log" 2>&1 &\n'
        "  pids+=($!)\n"
        "done\n"
        'rc=0; for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done; exit $rc\n'
    )
    (fake_bin / "srun").chmod(0o755)
    env = _env(PATH=f"{fake_bin}{os.pathsep}{os.environ['PATH']}", FAKE_SRUN_LOGS=str(tmp_path), SLURM_JOB_ID="4242",
               SLURM_JOB_NAME="genlip", SLURM_NNODES="2", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2",
               SLURM_NTASKS_PER_NODE="1", SLURM_JOB_NODELIST="localhost", SLURM_NODELIST="localhost",
               MASTER_PORT=str(_free_port()))
    with Nodes() as nodes:
        nodes.start(["bash", "experiments/scale/slurm.sbatch", CONFIG,
                     *_fit_args(shards, killed, STEPS, "resumed", "--ckpt_path", last)], tmp_path / "sbatch.log", env)
        codes = nodes.wait(timeout=300)
    assert codes == [0], (tmp_path / "task0.log").read_text()[-3000:] + (tmp_path / "task1.log").read_text()[-3000:]
    resumed, reference = _ranks(killed, "resumed"), torchrun_run["ranks"]
    assert {r["environment"] for r in resumed} == {"SLURMEnvironment"}
    assert [r["steps"] for r in resumed] == [r["steps"][2:] for r in reference]  # steps 3-6: the same samples
    (final,) = glob.glob(f"{killed}/runs/*/version_*/checkpoints/step=6.ckpt")
    difference = _max_abs_diff(_weights(final), _weights(os.path.join(torchrun_run["run"], "checkpoints", "last.ckpt")))
    print(f"killed at step 3, resumed by the SLURM recipe: max abs weight difference to the torchrun run "
          f"{difference:.2e}")
    assert difference < 1e-6


def test_frozen_node_ends_after_the_timeout_with_one_line(shards, tmp_path) -> None:
    from genlip_lit.checkpoints.loading import load_checkpoint

    with Nodes() as nodes:
        _lightning_env_nodes(nodes, shards, tmp_path, "--trainer.callbacks+.fault=stop",
                             "--trainer.callbacks+.fault_step=3", "--distributed.timeout", str(FROZEN_TIMEOUT_S))
        (code,) = nodes.wait([0], timeout=300)
        assert nodes.procs[1].poll() is None  # the frozen node stays frozen (killed by Nodes on exit)
    log = (tmp_path / "node0.log").read_text()
    assert code == 1, log[-3000:]
    (run,) = glob.glob(f"{tmp_path}/runs/*/version_*")
    waited = _print_timing(f"frozen node (SIGSTOP, timeout {FROZEN_TIMEOUT_S} s)", tmp_path, run, nodes.ended[0], log)
    (line,) = _error_lines(log)
    assert (f"rank 0 of 2 (node 0) stopped at step 3: no answer from the other ranks within distributed.timeout "
            f"({FROZEN_TIMEOUT_S} s)") in line
    assert "Traceback" not in log
    assert FROZEN_TIMEOUT_S <= waited < FROZEN_TIMEOUT_S + 60
    last = os.path.join(run, "checkpoints", "last.ckpt")
    module, _ = load_checkpoint(last)  # the genlip loader: weights-only, digests and finiteness checked
    assert type(module).__name__ == "GenLIPModule"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2
