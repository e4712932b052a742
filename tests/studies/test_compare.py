"""`genlip compare`: configs compose with the base, runs are skipped when finished and resumed when interrupted,
the table holds each run's logged evaluations; plus the report helpers."""

from __future__ import annotations

import csv
import glob
import json
import os
import shutil

import pytest
import yaml
from helpers import REPO

from genlip_lit.cli import main
from genlip_lit.commands.compare import main as compare_main
from genlip_lit.commands.compare import plan_runs
from genlip_lit.errors import GenLIPUserError
from genlip_lit.studies.compare_report import global_batch_size, markdown_table

OVERLAYS = sorted(glob.glob(os.path.join(REPO, "experiments", "compare", "*.yaml"))) + sorted(
    glob.glob(os.path.join(REPO, "experiments", "ablations", "*.yaml"))
)
SMALL = "{depth: 2, width: 64, ffn_hidden: 128}"


@pytest.mark.parametrize("overlay", OVERLAYS, ids=[os.path.basename(p) for p in OVERLAYS])
def test_every_comparison_config_composes_after_the_quickstart(overlay, capsys) -> None:
    os.chdir(REPO)
    with pytest.raises(SystemExit) as info:
        main(["fit", "--config", "experiments/quickstart.yaml", "--config", overlay, "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    wanted = yaml.safe_load(open(overlay))["model"]
    model = printed["model"]
    assert model["class_path"] == wanted.get("class_path", "genlip_lit.modules.GenLIPModule")
    for key, value in (wanted.get("init_args") or {}).items():
        if key != "tokenizer":
            assert model["init_args"][key] == value, key
    # the shared base still decides data, steps and evaluations
    assert printed["trainer"]["max_steps"] == 2700 and printed["data"]["init_args"]["batch_size"] == 8
    assert len(printed["trainer"]["callbacks"]) == 6


def test_plan_names_runs_and_rejects_bad_input(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text("trainer: {max_steps: 1}\n")
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "genlip.yaml").write_text("{}\n")
    (tmp_path / "a" / "clip.yaml").write_text("{}\n")
    specs = plan_runs([str(tmp_path / "a/genlip.yaml"), str(tmp_path / "b/genlip.yaml"), str(tmp_path / "a/clip.yaml")],
                      str(base), None, [])
    assert [s.name for s in specs] == ["a-genlip", "b-genlip", "clip"]
    with pytest.raises(GenLIPUserError, match="config not found: .*missing.yaml"):
        plan_runs([str(tmp_path / "missing.yaml")], str(base), None, [])
    with pytest.raises(GenLIPUserError, match="base config not found"):
        plan_runs([str(tmp_path / "a/clip.yaml")], str(tmp_path / "nobase.yaml"), None, [])
    with pytest.raises(GenLIPUserError, match="--max-steps"):
        plan_runs([str(tmp_path / "a/clip.yaml")], str(base), 0, [])
    assert plan_runs([str(tmp_path / "a/clip.yaml")], "none", None, [])[0].base is None
    # the fingerprint follows the file contents and the runner's overrides
    spec = plan_runs([str(tmp_path / "a/clip.yaml")], str(base), None, [])[0]
    before = spec.fingerprint()
    assert plan_runs([str(tmp_path / "a/clip.yaml")], str(base), 5, [])[0].fingerprint() != before
    (tmp_path / "a" / "clip.yaml").write_text("model: {}\n")
    assert spec.fingerprint() != before


def test_global_batch_and_markdown() -> None:
    config = {"trainer": {"devices": 2, "num_nodes": 3, "accumulate_grad_batches": 4},
              "data": {"init_args": {"batch_size": 8}}}
    assert global_batch_size(config) == 8 * 2 * 3 * 4
    assert global_batch_size({"trainer": {"devices": "auto"}, "data": {"init_args": {"batch_size": 8}}}) == 8
    assert markdown_table(["a", "b"], [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]


def tiny_base(tmp_path) -> str:
    """The quickstart shrunk to seconds, with cheap evaluations and the Throughput callback."""
    config = yaml.safe_load(open(os.path.join(REPO, "experiments", "quickstart.yaml")))
    config["trainer"].update(max_steps=3, val_check_interval=2, limit_val_batches=1, log_every_n_steps=1)
    config["trainer"]["callbacks"] = [
        {"class_path": "genlip_lit.callbacks.ZeroShot", "init_args": {"budget": 8}},
        {"class_path": "genlip_lit.callbacks.AttentionSink", "init_args": {"budget": 4}},
        {"class_path": "genlip_lit.callbacks.Throughput", "init_args": {"window": 1}},
    ]
    config["checkpoint"]["every_n_train_steps"] = 2
    config["data"]["init_args"].update(
        synthetic={"num_train": 64, "num_val": 16, "image_size": 32, "patch_size": 8},
        cache_dir=str(tmp_path / "cache"), image_size=32, batch_size=8, val_batch_size=8,
    )
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.mark.slow
def test_compare_runs_tabulates_skips_finished_and_resumes_interrupted(tmp_path, capsys) -> None:
    os.chdir(REPO)
    base = tiny_base(tmp_path)
    configs = []
    for name in ("genlip", "siglip"):
        shutil.copy(os.path.join(REPO, "experiments", "compare", f"{name}.yaml"), tmp_path / f"{name}.yaml")
        configs.append(str(tmp_path / f"{name}.yaml"))
    out = tmp_path / "out"
    argv = [*configs, "--output", str(out), "--base", base, "--max-steps", "3",
            "--", f"--model.init_args.arch_overrides={SMALL}"]

    assert compare_main(argv) == 0
    first = capsys.readouterr().out
    assert "[1/2] genlip: done" in first and "[2/2] siglip: done" in first
    with open(out / "table.csv") as f:
        rows = {r["run"]: r for r in csv.DictReader(f)}
    assert rows["genlip"]["objective"] == "GenLIP" and rows["siglip"]["objective"] == "SigLIP"
    assert rows["genlip"]["vision params"] == rows["siglip"]["vision params"]  # matched towers
    for r in rows.values():
        assert int(r["samples seen"]) == 3 * 8
        assert float(r["train GFLOPs/sample"]) > 0 and float(r["wall time (s)"]) > 0
        assert 0.0 <= float(r["zero-shot top-1"]) <= 1.0 and 0.0 < float(r["first-token mass, vision"]) < 1.0
    assert rows["genlip"]["caption CIDEr-D"] == ""  # no CaptionSamples callback in this base
    assert 0.0 < float(rows["genlip"]["first-token mass, text"]) < 1.0 and rows["siglip"]["first-token mass, text"] == ""
    assert (out / "table.md").read_text().count("\n") == 4 and (out / "curves.png").stat().st_size > 0
    result = json.loads((out / "genlip" / "result.json").read_text())
    assert result["steps"] == 3 and 0 < result["curves"]["train/loss"][-1][0] <= 3 * 8  # x = samples seen

    # again: both runs are finished, nothing is trained, the table is rewritten from their results
    logs = {n: (out / n / "fit.log").read_text() for n in ("genlip", "siglip")}
    assert compare_main(argv) == 0
    again = capsys.readouterr().out
    assert again.count("finished earlier, not re-run") == 2
    assert {n: (out / n / "fit.log").read_text() for n in logs} == logs

    # an interrupted run (checkpoint, no result) resumes from its last checkpoint instead of starting over
    (out / "genlip" / "result.json").unlink()
    assert compare_main(argv) == 0
    attempts = json.loads((out / "genlip" / "attempts.json").read_text())
    assert len(attempts) == 2 and attempts[-1]["resumed_from"].endswith("last.ckpt")
    assert json.loads((out / "genlip" / "result.json").read_text())["steps"] == 3

    # a finished run of a changed config is neither reused nor silently replaced
    with open(configs[1], "a") as f:
        f.write("# changed\n")
    with pytest.raises(GenLIPUserError, match="--rerun siglip"):
        compare_main(argv)
    assert compare_main([*argv[: argv.index("--")], "--rerun", "siglip", *argv[argv.index("--") :]]) == 0
    assert len(json.loads((out / "siglip" / "attempts.json").read_text())) == 1


def test_the_steps_of_the_run_in_training_are_read_from_its_log(tmp_path, caplog) -> None:
    """compare follows each `genlip fit` child through the plain progress lines it writes into fit.log."""
    import logging
    import subprocess
    import sys

    from genlip_lit.commands.compare import follow_fit

    log = tmp_path / "fit.log"
    log.write_text("$ genlip fit ... (an earlier attempt)\ngenlip: fit: 1/9 steps (11.1%)\n")
    child = ("import sys, time\n"
             "with open(sys.argv[1], 'a') as f:\n"
             "    for line in ('genlip: fit > validate: done, 2 batches', 'genlip: fit: 4/10 steps (40.0%), ETA 0:01',\n"
             "                 'genlip: fit: 10/10 steps (100.0%)'):\n"
             "        f.write(line + '\\n'); f.flush(); time.sleep(0.2)\n"
             "sys.exit(3)\n")
    caplog.set_level(logging.INFO, logger="genlip_lit.console.progress")
    proc = subprocess.Popen([sys.executable, "-c", child, str(log)])
    assert follow_fit(proc, log, "siglip", total=None) == 3  # the child's exit code
    lines = [r.getMessage() for r in caplog.records if r.name == "genlip_lit.console.progress"]
    assert lines[-1].startswith("siglip: done, 10 steps in ")  # the total came from the log: 10, not 9
    assert not any("1/9" in line for line in lines)  # lines of an earlier attempt are not this run's
