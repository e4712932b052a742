"""`genlip optimize` (commands/optimize.py): the command line of the synthetic writer and of corpus ingestion."""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal

import pytest
from PIL import Image

from genlip_lit.commands import optimize as opt
from genlip_lit.data.shards import META_FILE, default_val_samples
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.result import MIN_RELIABLE_IMAGES
from genlip_lit.ingest import corpus, sources
from genlip_lit.ingest.corpus import IngestStopped


def test_cli(tmp_path, capsys) -> None:
    out = tmp_path / "cli"
    argv = [
        "--output",
        str(out),
        "--num-samples",
        "6",
        "--val-samples",
        "3",
        "--image-size",
        "16",
        "--seed",
        "1",
    ]
    assert opt.main(["optimize", *argv]) == 0
    line = capsys.readouterr().out.strip()
    assert "6 train + 3 val" in line and str(out) in line
    meta = json.loads((out / META_FILE).read_text())
    assert meta["scene"]["image_size"] == 16 and meta["seed"] == 1
    with pytest.raises(GenLIPUserError, match="only 'synthetic'"):
        opt.main(["--source", "laion", "--output", str(tmp_path / "x"), "--num-samples", "5"])
    with pytest.raises(GenLIPUserError, match="patch_size"):
        opt.main(["--output", str(tmp_path / "y"), "--num-samples", "5", "--image-size", "20"])
    assert default_val_samples(1000) == 200 and default_val_samples(100_000) == 2000


def test_cli_size_options(tmp_path) -> None:
    with pytest.raises(GenLIPUserError, match="max_image_size"):
        opt.main(["--output", str(tmp_path / "a"), "--num-samples", "2", "--max-image-size", "60"])
    with pytest.raises(GenLIPUserError, match="word_font_px"):
        opt.main(["--output", str(tmp_path / "b"), "--num-samples", "2", "--word-font-px", "4"])
    out = tmp_path / "c"
    argv = ["--output", str(out), "--num-samples", "2", "--val-samples", "1", "--image-size", "32"]
    assert opt.main([*argv, "--max-image-size", "64", "--word-font-px", "8"]) == 0
    scene = json.loads((out / META_FILE).read_text())["scene"]
    assert scene["max_image_size"] == 64 and scene["word_font_px"] == 8


# --- corpus runs: exit status, how to go on after a stop -----------------------------------------------------


def _folder(root, n=4, bad=False) -> str:
    root.mkdir()
    for i in range(n):
        image = b"<html>404</html>" if bad else _png((i * 60, 0, 0))
        (root / f"{i}.png").write_bytes(image)
        (root / f"{i}.txt").write_text(f"box {i}")
    return str(root)


def _png(color) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
    return buffer.getvalue()


def test_keeping_nothing_is_a_failure(tmp_path) -> None:
    """It used to exit 0; a GenLIPUserError is one line and exit status 2 from `genlip` (tests/commands/test_cli.py)."""
    folder = _folder(tmp_path / "in", n=3, bad=True)
    with pytest.raises(GenLIPUserError) as info:
        opt.main(["--input", folder, "--output", str(tmp_path / "out"), "--num-workers", "1"])
    message = str(info.value)
    assert "\n" not in message and message.startswith("kept 0 of 3 samples (not_an_image 3): nothing to train on")
    assert message.endswith("rerun with --overwrite")
    assert not (tmp_path / "out" / META_FILE).exists()  # not marked as a finished dataset


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_a_stopped_run_names_the_exact_command_that_finishes_it(tmp_path, monkeypatch, stop) -> None:
    monkeypatch.setattr(sources, "FILES_PER_UNIT", 2)
    _folder(tmp_path / "in")
    real, calls = corpus.process_unit, []

    def stopping(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            if stop == "sigterm":  # kill PID, or a scheduler's preemption
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "process_unit", stopping)
    monkeypatch.chdir(tmp_path)
    argv = ["--input", "in", "--output", "out dir", "--overwrite", "--max-side", "24", "--num-workers", "1"]
    with pytest.raises(IngestStopped) as info:
        opt.main(argv)
    command = "genlip optimize --input in --output 'out dir' --max-side 24 --num-workers 1 --resume"
    assert f"interrupted after 1 of 2 units; the output {tmp_path / 'out dir'} is resumable: finish it " \
           f"with `{command}`" in str(info.value)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler was only there during the run
    # a plain rerun says the same; the command itself finishes the run
    monkeypatch.setattr(corpus, "process_unit", real)
    plain = [a for a in argv if a != "--overwrite"]
    with pytest.raises(GenLIPUserError, match=re.escape(f"finish it with `{command}`")):
        opt.main(plain)
    assert opt.main(shlex.split(command)[2:]) == 0
    meta = json.loads((tmp_path / "out dir" / META_FILE).read_text())
    assert meta["num_train"] + meta["num_val"] == 4


def test_resume_command_drops_mode_flags_in_any_spelling() -> None:
    assert opt.resume_command(["--input", "a b", "--output=o", "--append"]) == \
        "genlip optimize --input 'a b' --output=o --resume"
    assert opt.resume_command(["--overwrite", "--input", "x", "--output", "o", "--no_append"]) == \
        "genlip optimize --input x --output o --resume"


def test_safety_flags_reach_the_readers(tmp_path) -> None:
    folder = _folder(tmp_path / "in", n=2)
    (tmp_path / "elsewhere.png").write_bytes(_png((9, 9, 9)))
    os.symlink(tmp_path / "elsewhere.png", tmp_path / "in" / "link.png")
    (tmp_path / "in" / "link.txt").write_text("a linked box")
    base = ["--input", folder, "--num-workers", "1", "--val-fraction", "0"]
    opt.main([*base, "--output", str(tmp_path / "a")])
    assert json.loads((tmp_path / "a" / "genlip_report.json").read_text())["skipped"] == {"outside_input_root": 1}
    opt.main([*base, "--output", str(tmp_path / "b"), "--allow-outside", "--max-caption-chars", "3"])
    report = json.loads((tmp_path / "b" / "genlip_report.json").read_text())
    assert report["skipped"] == {} and report["kept_total"] == 3 and report["captions_cut"] == 3
    with pytest.raises(GenLIPUserError, match=r"kept 0 of 3 samples \(outside_input_root 1, too_many_bytes 2\)"):
        opt.main([*base, "--output", str(tmp_path / "c"), "--max-bytes", "10"])
    with pytest.raises(GenLIPUserError, match="--max-bytes: 'lots' is not a size"):
        opt.main([*base, "--output", str(tmp_path / "d"), "--max-bytes", "lots"])


def test_a_config_file_sets_options_and_the_resume_command_overrides_its_mode(tmp_path) -> None:
    config = tmp_path / "optimize.yaml"
    config.write_text(f"output: {tmp_path / 'syn'}\nnum_samples: 2\nval_samples: 1\nimage_size: 16\n"
                      "overwrite: true\n")
    assert opt.main(["--config", str(config)]) == 0
    assert json.loads((tmp_path / "syn" / META_FILE).read_text())["num_train"] == 2
    assert opt.main(["--config", str(config), "--num-samples", "3"]) == 0  # flags after it win
    assert json.loads((tmp_path / "syn" / META_FILE).read_text())["num_train"] == 3
    with pytest.raises(GenLIPUserError, match="--overwrite and --resume exclude each other"):
        opt.main(["--config", str(config), "--resume"])
    # a mode set in the config is switched off on the line that finishes an interrupted run
    command = opt.resume_command(["--config", str(config), "--input", "in"])
    assert command == f"genlip optimize --config {config} --input in --no_overwrite --no_append --resume"
    args = opt.build_parser().parse_args(shlex.split(command)[2:])
    assert (args.overwrite, args.append, args.resume) == (False, False, True)


def test_a_small_val_split_is_flagged(tmp_path, caplog) -> None:
    """Few held-out images make every evaluation a rough figure: the run says so and names the flag."""
    folder = _folder(tmp_path / "in", n=4)
    with caplog.at_level("WARNING", logger="genlip_lit"):
        opt.main(["--input", folder, "--num-workers", "1", "--val-fraction", "0.5", "--output", str(tmp_path / "o")])
    kept = json.loads((tmp_path / "o" / "genlip_report.json").read_text())["kept"]
    assert 0 < kept["val"] < MIN_RELIABLE_IMAGES
    assert f"only {kept['val']} val images" in caplog.text and "--val-fraction" in caplog.text
