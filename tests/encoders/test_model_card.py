"""The model card `genlip export` writes carries the newest `genlip eval` report of the same checkpoint and the
end-of-fit callback figures, each named; export says which it used (issue 24: "None recorded" beside a report)."""

from __future__ import annotations

import json
import os

import torch
from helpers import tiny_objective, write_checkpoint

from genlip_lit.cli import main
from genlip_lit.encoders.model_card import checkpoint_facts, figures_source


def _checkpoint(folder) -> str:
    return write_checkpoint(tiny_objective("genlip", {}, seed=0), folder / "last.ckpt")  # the preset "tiny" as is


def _report(folder, digest, top1: float, when: float) -> str:
    folder.mkdir(parents=True)
    path = folder / "report.json"
    path.write_text(json.dumps({"checkpoint": {"weights_sha256": digest}, "evaluations": {"probe": {"scalars": {
        "probe/linear_top1": top1, "probe/seconds": 9.0}, "details": {}}}}))
    os.utime(path, (when, when))
    return str(path)


def test_export_card_reads_the_newest_report_of_this_checkpoint(tmp_path, capsys) -> None:
    ckpt = _checkpoint(tmp_path / "run" / "checkpoints")
    digest = torch.load(ckpt, weights_only=True)["genlip_weights_sha256"]
    assert checkpoint_facts(ckpt)["report"] is None
    older = _report(tmp_path / "run" / "checkpoints" / "eval", digest, 0.25, 1_700_000_000)
    newer = _report(tmp_path / "run" / "eval_big", digest, 0.5, 1_700_000_600)  # beside checkpoints/: counts too
    _report(tmp_path / "run" / "other", "0" * 64, 0.99, 1_700_000_900)  # another checkpoint's report: ignored
    facts = checkpoint_facts(ckpt)
    assert facts["report"]["path"] == newer and facts["report"]["figures"] == {"probe/linear_top1": 0.5}
    assert older != newer
    out = tmp_path / "enc"
    capsys.readouterr()
    assert main(["export", "--ckpt", ckpt, "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[-1] == f"model card figures: the genlip eval report {os.path.relpath(newer)} (2023-11-14 22:23 UTC)"
    card = (out / "README.md").read_text()
    assert f"From `genlip eval` (`{newer}`, written 2023-11-14 22:23 UTC):" in card
    assert "| probe/linear_top1 | 0.5000 |" in card and "0.99" not in card and "seconds" not in card


def test_a_report_without_a_digest_counts_only_at_the_default_place_and_newer(tmp_path) -> None:
    ckpt = _checkpoint(tmp_path / "checkpoints")
    os.utime(ckpt, (1_700_000_000, 1_700_000_000))
    _report(tmp_path / "checkpoints" / "elsewhere", None, 0.7, 1_700_000_500)
    stale = _report(tmp_path / "checkpoints" / "eval", None, 0.6, 1_600_000_000)
    assert checkpoint_facts(ckpt)["report"] is None  # elsewhere: unknown checkpoint; eval/: older than the weights
    os.utime(stale, (1_700_000_100, 1_700_000_100))
    assert checkpoint_facts(ckpt)["report"]["figures"] == {"probe/linear_top1": 0.6}
    facts = checkpoint_facts(ckpt)
    facts["report"] = None
    assert figures_source(facts, "CKPT") == ("model card figures: none recorded (run `genlip eval --ckpt CKPT "
                                             "--config experiments/eval.yaml` before exporting to include them)")
