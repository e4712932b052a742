"""Sidecar captions of several lines (`genlip optimize --caption-lines first|all`) and the caption token lengths
every optimize run reports against the configs' max_text_len (issue 24: a sidecar holding a caption and ~60
translations went into training whole, and only "5 captions cut" said anything)."""

from __future__ import annotations

import json
import logging
import os

import litdata
import pytest
import yaml
from helpers import REPO
from PIL import Image

from genlip_lit.commands import optimize as opt
from genlip_lit.ingest.caption_lengths import CONFIG_TEXT_LENS, length_summary, percentile, summary_text
from genlip_lit.ingest.cleaning import clean_caption


def test_the_config_text_lengths_are_the_configs() -> None:
    for name, max_len in CONFIG_TEXT_LENS.items():
        with open(os.path.join(REPO, "experiments", name), encoding="utf-8") as fh:
            assert yaml.safe_load(fh)["model"]["init_args"]["max_text_len"] == max_len, name


def test_length_summary_counts_what_each_config_would_cut() -> None:
    assert [percentile([1, 2, 3, 4], q) for q in (0, 50, 95, 100)] == [1, 2, 4, 4]
    summary = length_summary([5, 70, 62, 63, 126, 127, 1000, 8, 9, 10], total=40)
    assert (summary["median"], summary["p95"], summary["max"], summary["counted"]) == (62, 1000, 1000, 10)
    # room = max_text_len - 2 (BOS, EOS): 62 fits in 64, 63 does not
    assert summary["would_be_cut"] == {"corpus_cpu.yaml": 5, "stage1_corpus.yaml": 2, "stage2_corpus.yaml": 1}
    assert summary_text(summary) == (
        "captions: median 62, p95 1,000, max 1,000 tokens (open_clip BPE, 10 of the 40 train captions); cut in "
        "training at max_text_len 64 (corpus_cpu.yaml): 5 (50.0%), 128 (stage1_corpus.yaml): 2 (20.0%), "
        "512 (stage2_corpus.yaml): 1 (10.0%)")


def test_first_line_keeps_the_first_non_blank_line() -> None:
    assert clean_caption(b"\n  a red  square\nun carre rouge\n", first_line=True) == "a red square"
    assert clean_caption("a red square\nun carre rouge") == "a red square un carre rouge"


def _corpus(root) -> str:
    folder = root / "images"
    folder.mkdir()
    for i in range(6):
        Image.new("RGB", (24, 24), (40 * i, 90, 30)).save(folder / f"{i}.png")
        translations = "".join(f"\ntraduction {j}: " + "un mot " * 30 for j in range(3)) if i % 2 else ""
        (folder / f"{i}.txt").write_text(f"caption {i}{translations}\n", encoding="utf-8")
    return str(folder)


def _captions(out) -> dict[str, str]:
    return {item["key"]: item["caption"] for item in litdata.StreamingDataset(os.path.join(out, "train"))}


@pytest.mark.parametrize("lines", ["first", "all"])
def test_optimize_chooses_sidecar_lines_warns_and_reports_token_lengths(tmp_path, caplog, capsys, lines) -> None:
    source = _corpus(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="genlip_lit"):
        assert opt.main(["--input", source, "--output", str(out), "--num-workers", "1", "--val-fraction", "0",
                         "--caption-lines", lines]) == 0
    captions = _captions(out)
    said = [r.getMessage() for r in caplog.records]
    if lines == "first":
        assert captions == {str(i): f"caption {i}" for i in range(6)}
        assert "3 of 6 kept samples have a .txt sidecar of several lines (up to 4): kept the first line of each " \
               "(--caption-lines all keeps every line, joined)" in said
    else:
        assert captions["0"] == "caption 0"
        assert captions["1"].startswith("caption 1 traduction 0: un mot un mot") and "traduction 2" in captions["1"]
        assert any(m.startswith("3 of 6 kept samples have a .txt sidecar of several lines (up to 4): kept every "
                                "line") for m in said)
    report = json.loads((out / "genlip_report.json").read_text())
    tokens = report["caption_tokens"]
    assert report["multiline_sidecars"] == 3 and report["caption_lines"] == lines
    assert tokens["counted"] == 6 and tokens["median"] == 2  # "caption N": two tokens
    cut = tokens["would_be_cut"]["corpus_cpu.yaml"]
    assert cut == (0 if lines == "first" else 3) and tokens["max"] == (2 if lines == "first" else tokens["max"])
    assert summary_text(tokens) in said


def test_a_dataset_written_before_caption_lines_appends_with_all(tmp_path) -> None:
    source = _corpus(tmp_path)
    out = tmp_path / "out"
    base = ["--output", str(out), "--num-workers", "1", "--val-fraction", "0"]
    assert opt.main(["--input", source, *base, "--caption-lines", "all"]) == 0
    plan_path = out / ".genlip_work" / "plan.json"
    if not plan_path.exists():
        (plan_path,) = [p for p in out.rglob("*.json") if "options" in json.loads(p.read_text())]
    plan = json.loads(plan_path.read_text())
    del plan["options"]["caption_lines"]  # as written before the option existed: every line kept
    plan_path.write_text(json.dumps(plan))
    more = tmp_path / "more"
    more.mkdir()
    Image.new("RGB", (24, 24), (1, 2, 3)).save(more / "x.png")
    (more / "x.txt").write_text("one more\n", encoding="utf-8")
    with pytest.raises(Exception, match="options differ"):
        opt.main(["--input", str(more), *base, "--append"])
    assert opt.main(["--input", str(more), *base, "--append", "--caption-lines", "all"]) == 0
