"""callbacks/process_group.py: `distributed.timeout` reaches the strategies' process group; a collective that lost
its peers (gloo's own messages) becomes one line naming the rank, the step, the timeout and the last checkpoint,
with the traceback in the run directory; other errors pass through untouched. (The real frozen and killed peers:
tests/callbacks/test_multinode.py.)"""

from __future__ import annotations

import os
from datetime import timedelta
from types import SimpleNamespace

import pytest
import torch
from helpers import REPO
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from genlip_lit.callbacks.process_group import DEFAULT_TIMEOUT_S, ProcessGroupGuard, peer_failure
from genlip_lit.cli import main
from genlip_lit.errors import GenLIPUserError

# what gloo raised in tests/callbacks/test_multinode.py's runs
GLOO_TIMEOUT = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:129] Timed out "
                "waiting 5000ms for send operation to complete")
GLOO_CLOSED = ("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
               "[127.0.0.1]:11137. This is typically caused by a remote worker crashing.")


def test_the_timeout_reaches_the_strategies_process_group() -> None:
    for strategy in (DDPStrategy(), ModelParallelStrategy()):
        assert strategy._timeout == timedelta(minutes=30)  # Lightning's default: half an hour of silence
        ProcessGroupGuard(7).apply_to(strategy)
        assert strategy._timeout == timedelta(seconds=7)  # what Lightning hands init_process_group
    assert DEFAULT_TIMEOUT_S == 600


@pytest.mark.parametrize("bad", [0, -3, "ten", True])
def test_a_timeout_that_is_not_positive_seconds_is_refused(bad) -> None:
    with pytest.raises(GenLIPUserError, match="distributed.timeout must be a number of seconds > 0"):
        ProcessGroupGuard(bad)


def test_genlip_fit_has_the_key_with_its_default(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["fit", "--config", os.path.join(REPO, "experiments", "quickstart.yaml"), "--print_config"])
    assert "\ndistributed:\n  timeout: 600.0\n" in capsys.readouterr().out


def test_lost_peers_are_recognised_and_nothing_else() -> None:
    from torch.distributed import DistStoreError

    # a node that never started: the rendezvous store gives up after the same timeout
    assert peer_failure(DistStoreError("Timed out after 5 seconds waiting for clients. 1/2 clients joined.")) == "join"
    assert peer_failure(RuntimeError(GLOO_TIMEOUT)) == "timeout"
    # gloo's words for the same timeout in another spot of the same run (DDP's buffer broadcast)
    assert peer_failure(RuntimeError("Application timeout caused pair closure")) == "timeout"
    assert peer_failure(RuntimeError(GLOO_CLOSED)) == "closed"
    for other in (RuntimeError("CUDA out of memory"), ValueError("timeout must be positive"), KeyError("peer")):
        assert peer_failure(other) is None


def test_a_collective_that_failed_is_recognised_by_where_it_was_raised() -> None:
    # backends word their failures differently: an error raised inside torch.distributed counts whatever it says
    from genlip_lit.callbacks.process_group import _raised_by_a_collective

    with pytest.raises(ValueError) as inside:
        torch.distributed.get_rank()  # no process group here: raised in torch/distributed/distributed_c10d.py
    assert _raised_by_a_collective(inside.value)
    with pytest.raises(RuntimeError) as outside:
        raise RuntimeError("timed out reading the config")
    assert not _raised_by_a_collective(outside.value) and peer_failure(outside.value) is None


def _trainer(tmp_path, world_size: int = 2, ckpt: str = "") -> SimpleNamespace:
    callback = SimpleNamespace(dirpath=str(tmp_path / "run" / "checkpoints"), last_model_path=ckpt)
    return SimpleNamespace(world_size=world_size, global_rank=1, node_rank=1, global_step=7, logger=None,
                           checkpoint_callback=callback, default_root_dir=str(tmp_path))


def test_a_lost_peer_becomes_one_line_and_a_traceback_file(tmp_path) -> None:
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"x")
    guard = ProcessGroupGuard(30)
    try:
        raise RuntimeError(GLOO_TIMEOUT)
    except RuntimeError as err:
        error = err
    guard.on_exception(_trainer(tmp_path, ckpt=str(ckpt)), None, error)
    log_file = tmp_path / "run" / "rank1-error.log"
    assert error.genlip_line == (
        "rank 1 of 2 (node 1) stopped at step 7: no answer from the other ranks within distributed.timeout (30 s): "
        "a node is frozen or stalled (raise the timeout for slow steps or filesystems); last checkpoint "
        f"{ckpt}: relaunch all nodes with --ckpt_path {ckpt}; traceback in {log_file}")
    assert "Traceback" in log_file.read_text() and "Timed out waiting" in log_file.read_text()

    closed = RuntimeError(GLOO_CLOSED)
    guard.on_exception(_trainer(tmp_path), None, closed)  # no checkpoint yet
    assert "a peer rank closed its connection: it crashed or was killed" in closed.genlip_line
    assert "no checkpoint was written yet" in closed.genlip_line


def test_one_process_and_other_errors_are_left_alone(tmp_path) -> None:
    guard = ProcessGroupGuard()
    single, other = RuntimeError(GLOO_CLOSED), RuntimeError("CUDA out of memory")
    guard.on_exception(_trainer(tmp_path, world_size=1), None, single)
    guard.on_exception(_trainer(tmp_path), None, other)
    assert not hasattr(single, "genlip_line") and not hasattr(other, "genlip_line")
    assert not os.path.exists(tmp_path / "run")


def test_a_node_that_never_joined_is_named_and_logged_beside_the_runs(tmp_path) -> None:
    from torch.distributed import DistStoreError

    trainer = _trainer(tmp_path)
    trainer.checkpoint_callback.dirpath = None  # the run directory is not known before the ranks meet
    trainer.logger = SimpleNamespace(root_dir=str(tmp_path / "runs" / "corpus_cpu"))
    error = DistStoreError("Timed out after 5 seconds waiting for clients. 1/2 clients joined.")
    ProcessGroupGuard(5).on_exception(trainer, None, error)
    assert "not every rank joined within distributed.timeout (5 s): start every node with the same" in error.genlip_line
    assert (tmp_path / "runs" / "corpus_cpu" / "rank1-error.log").is_file()
