"""`genlip optimize` (commands/optimize.py): the command line of the synthetic writer and of corpus ingestion."""

from __future__ import annotations

import json

import pytest

from genlip_lit.commands import optimize as opt
from genlip_lit.data.shards import META_FILE, default_val_samples
from genlip_lit.errors import GenLIPUserError


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
