"""`genlip eval-res`: the OCR word parser, resolution parsing, an end-to-end run and OCR oracles."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch

from genlip_lit.commands.eval_res import default_name
from genlip_lit.commands.eval_res import main as resolution_main
from genlip_lit.data.synthetic import SceneConfig, written_word
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules.genlip import GenLIPModule
from genlip_lit.studies.resolution_io import (
    EVAL_SEED,
    Resolution,
    make_scenes,
    ocr_exact_match,
    parse_resolutions,
    round_to_patch,
)

# small scenes so the model runs in milliseconds: 32-48 px sides (16-36 patches), 8 px words
SMALL = ["--image-size", "32", "--max-image-size", "48", "--word-font-px", "8", "--max-new-tokens", "6",
         "--threads", "1"]


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> str:
    """An untrained one-block GenLIP written the way `genlip fit` writes checkpoints (no training: seconds)."""
    from helpers import tiny_objective, write_checkpoint

    module = tiny_objective("genlip", {"depth": 1, "width": 32, "num_heads": 2, "ffn_hidden": 64}, seed=0,
                            max_text_len=48)
    path = tmp_path_factory.mktemp("evalres") / "runs" / "tiny_run" / "version_0" / "checkpoints" / "last.ckpt"
    return write_checkpoint(module, path, datamodule_hyper_parameters={"image_size": 32, "mean": [0.5] * 3,
                                                                       "std": [0.5] * 3})


# ---------------------------------------------------------------------------------------------- pure parts
def test_written_word_parses_the_caption_grammar() -> None:
    assert written_word("a small red star at the top. the word cat is written in black.") == "cat"
    assert written_word("The Word Moon is written in white.") == "moon"
    assert written_word("a large blue circle in the center.") is None
    assert written_word("the word is written in black.") is None  # no word between the phrase's parts
    assert written_word("the word cat written in black") is None


def test_ocr_exact_match_counts_only_scenes_with_a_word() -> None:
    captions = ["x. the word cat is written in black.",  # right
                "x. the word dog is written in white.",  # wrong word
                "x.",  # no phrase: wrong
                "x. the word fox is written in black."]  # scene without a word: not counted
    em, n = ocr_exact_match(captions, ["cat", "cup", "sun", None])
    assert n == 3 and em == pytest.approx(1 / 3)
    em, n = ocr_exact_match(["x."], [None])
    assert n == 0 and math.isnan(em)
    with pytest.raises(ValueError):
        ocr_exact_match(["x."], [])


def test_resolution_parsing_and_rounding() -> None:
    assert round_to_patch(64, 8) == 64 and round_to_patch(100, 8) == 104 and round_to_patch(99, 8) == 96
    assert round_to_patch(3, 8) == 8 and round_to_patch(12, 8) == 16  # never below a patch; halves round up
    resolutions, notes = parse_resolutions(["64", "100", "native", " NATIVE ", "96", "066"], 8)
    assert resolutions == [Resolution(64, "64"), Resolution(104, "100"), Resolution(None, "native"),
                           Resolution(96, "96")]
    assert [r.label for r in resolutions] == ["64", "104", "native", "96"]
    assert any("100 rounded to 104" in n for n in notes) and sum("evaluated once" in n for n in notes) == 2
    for bad in ("abc", "0", "-8", "1.5", ""):
        with pytest.raises(GenLIPUserError, match="neither a positive integer"):
            parse_resolutions([bad], 8)


def test_default_names_are_run_directories() -> None:
    assert default_name("runs/compare/genlip/tb/checkpoints/last.ckpt") == "genlip"
    assert default_name("runs/quickstart/version_3/checkpoints/step=10.ckpt") == "quickstart"


# ---------------------------------------------------------------------------------------------- the command
def test_end_to_end_writes_every_output(tiny_ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "res"
    threads = torch.get_num_threads()
    assert resolution_main(["--ckpt", tiny_ckpt, "--resolutions", "30", "native", "--num-scenes", "8",
                            "--probe-train", "12", "--output", str(out), "--attentive-epochs", "1", *SMALL]) == 0
    assert torch.get_num_threads() == threads  # --threads is undone for in-process callers
    printed = capsys.readouterr().out
    assert "| tiny_run | 32 | 32x32 |" in printed and "rounded to 32" in printed
    for name in ("table.md", "table.csv", "result.json", "resolution.png"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "result.json").read_text())
    assert result["seed"] == EVAL_SEED and result["probe_seed"] != EVAL_SEED
    assert [(r["name"], r["resolution"]) for r in result["rows"]] == [("tiny_run", "32"), ("tiny_run", "native")]
    square, native = (r["metrics"] for r in result["rows"])
    for m in (square, native):
        assert m["cider"] >= 0 and 0 <= m["bleu4"] <= 1 and 0 <= m["ocr_em"] <= 1 and m["ocr_scenes"] == 8
        assert 0 <= m["linear_top1"] <= 1 and m["seconds"] > 0
    assert 0 <= square["attentive_top1"] <= 1 and native["attentive_top1"] is None  # native sizes differ
    assert square["readout"] is None and 0 <= native["readout"] <= 1 and native["readout_patches"] > 0
    assert 32 <= result["rows"][1]["side"] <= 48  # native: the side of a square of the mean pixel count
    rows = list(csv.reader((out / "table.csv").open()))
    assert rows[0][:4] == ["checkpoint", "resolution", "input (WxH)", "patches/image"] and len(rows) == 3
    assert "attentive probe top-1" in rows[0]
    md = (out / "table.md").read_text()
    assert "readout n/a: squashed inputs" in md and "attentive probe n/a" in md


def _oracle_run(tiny_ckpt, out, monkeypatch, strip_words: bool) -> dict:
    """Run at native resolution with captions looked up from the scenes whose pixels the model is given."""
    config = SceneConfig(image_size=32, max_image_size=48, word_font_px=8, word_prob=1.0, patch_size=8)
    scenes = make_scenes(EVAL_SEED, 6, config)
    by_pixels = {np.asarray(s.image).tobytes(): s.caption for s in scenes}

    def fake_generate(self, pixel_values, max_new_tokens=None, **kwargs):
        images = ((pixel_values * 0.5 + 0.5) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        captions = [by_pixels[np.ascontiguousarray(im).tobytes()] for im in images]
        return [c.split(" the word")[0] for c in captions] if strip_words else captions

    monkeypatch.setattr(GenLIPModule, "generate_captions", fake_generate)
    assert resolution_main(["--ckpt", tiny_ckpt, "--resolutions", "native", "--num-scenes", "6",
                            "--probe-train", "12", "--output", str(out), *SMALL]) == 0
    return json.loads((out / "result.json").read_text())["rows"][0]["metrics"]


def test_ocr_oracle_true_captions_score_one(tiny_ckpt, tmp_path, monkeypatch) -> None:
    m = _oracle_run(tiny_ckpt, tmp_path / "oracle", monkeypatch, strip_words=False)
    assert m["ocr_em"] == 1.0 and m["ocr_scenes"] == 6 and m["bleu4"] == pytest.approx(1.0)


def test_ocr_oracle_captions_without_words_score_zero(tiny_ckpt, tmp_path, monkeypatch) -> None:
    m = _oracle_run(tiny_ckpt, tmp_path / "oracle", monkeypatch, strip_words=True)
    assert m["ocr_em"] == 0.0 and m["ocr_scenes"] == 6


def test_non_generative_checkpoints_still_get_probes(tiny_ckpt, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(GenLIPModule, "is_generative", property(lambda self: False))
    out = tmp_path / "nongen"
    assert resolution_main(["--ckpt", tiny_ckpt, "--name", "enc", "--resolutions", "32", "--num-scenes", "6",
                            "--probe-train", "12", "--output", str(out), *SMALL]) == 0
    m = json.loads((out / "result.json").read_text())["rows"][0]["metrics"]
    assert m["cider"] is None and m["ocr_em"] is None and 0 <= m["linear_top1"] <= 1
    table = (out / "table.md").read_text()
    assert "| enc | 32 | 32x32 | 16 | n/a | n/a | n/a |" in table and "does not generate captions" in table


def test_errors_are_named(tiny_ckpt, tmp_path) -> None:
    out = str(tmp_path / "x")
    with pytest.raises(GenLIPUserError, match="checkpoint not found"):
        resolution_main(["--ckpt", str(tmp_path / "missing.ckpt"), "--output", out])
    with pytest.raises(GenLIPUserError, match="'huge' is neither"):
        resolution_main(["--ckpt", tiny_ckpt, "--resolutions", "64", "huge", "--output", out])
    with pytest.raises(GenLIPUserError, match="2 --name for 1 --ckpt"):
        resolution_main(["--ckpt", tiny_ckpt, "--name", "a", "--name", "b", "--output", out])
    with pytest.raises(GenLIPUserError, match="--num-scenes must be at least 1"):
        resolution_main(["--ckpt", tiny_ckpt, "--num-scenes", "0", "--output", out])
