"""ingest/unit_writer.py: no single sample can stop a run, and `--resume` gets past the sample that killed one.

Hostile samples are built here: an image JPEG cannot hold, a label past int64, a caption UTF-8 cannot spell, a
10 MB caption, a file name that is not UTF-8, and a sample whose decoding kills the process outright.
"""

from __future__ import annotations

import io
import json
import os
import signal

import pytest
from PIL import Image

from genlip_lit.ingest import sources, unit_writer
from genlip_lit.ingest.cleaning import ImagePolicy
from genlip_lit.ingest.corpus import IngestOptions, IngestStopped, optimize_corpus
from genlip_lit.ingest.layouts import open_source
from genlip_lit.ingest.unit_writer import storable_key

OPTIONS = IngestOptions(policy=ImagePolicy(max_side=64), val_fraction=0.0, chunk_bytes="256KB")


def _png(size=(40, 30), color=(200, 30, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else 0).save(buffer, format="PNG")
    return buffer.getvalue()


def _stored(out: str) -> list[tuple[str, str, int]]:
    import litdata

    path = os.path.join(out, "train")
    if not os.path.exists(os.path.join(path, "index.json")):
        return []
    ds = litdata.StreamingDataset(path)
    return [(ds[i]["key"], ds[i]["caption"], ds[i]["label"]) for i in range(len(ds))]


def test_every_per_sample_failure_is_a_counted_skip(tmp_path) -> None:
    (tmp_path / "m").mkdir()
    rows = [
        ("good.png", _png(), "a red box", 1),
        ("strip.png", _png((70000, 16), mode="P"), "a long strip", 2),  # JPEG holds 65500 px a side
        ("label.png", _png(color=(1, 2, 3)), "a huge label", 2**63),  # the shard writer stores int64
        ("surrogate.png", _png(color=(4, 5, 6)), "lone \ud800 surrogate", 3),  # no UTF-8 spelling
        ("long.png", _png(color=(7, 8, 9)), "word " * 2_000_000, 4),  # 10 MB of caption
    ]
    with open(tmp_path / "m" / "rows.jsonl", "w") as fh:
        for name, data, caption, label in rows:
            (tmp_path / "m" / name).write_bytes(data)
            fh.write(json.dumps({"image": name, "caption": caption, "label": label}) + "\n")
    out = str(tmp_path / "out")
    no_shrinking = IngestOptions(val_fraction=0.0, chunk_bytes="256KB")  # JPEG output, sizes kept
    report = optimize_corpus(open_source([str(tmp_path / "m" / "rows.jsonl")]), out, no_shrinking)
    assert report["skipped"] == {"bad_label": 1, "caption_not_utf8": 1, "too_large_for_format": 1}
    assert report["captions_cut"] == 1 and report["kept_total"] == 2
    stored = _stored(out)
    assert [(k, len(c), label) for k, c, label in stored][0] == ("rows/1:good.png", 9, 1)
    assert stored[1][0] == "rows/5:long.png" and 9_000 < len(stored[1][1]) <= 10_000  # cut, not stored whole


def test_an_unexpected_exception_skips_only_its_sample(tmp_path, monkeypatch) -> None:
    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"{i}.png").write_bytes(_png(color=(i * 50, 0, 0)))
        (tmp_path / "in" / f"{i}.txt").write_text(f"box {i}")
    poison = (tmp_path / "in" / "1.png").read_bytes()
    real = unit_writer.clean_image

    def clean_image(data, policy):
        if data == poison:
            raise ZeroDivisionError("a decoder bug")
        return real(data, policy)

    monkeypatch.setattr(unit_writer, "clean_image", clean_image)
    report = optimize_corpus(open_source([str(tmp_path / "in")]), str(tmp_path / "out"), OPTIONS)
    assert report["skipped"] == {"unexpected_error": 1} and report["kept_total"] == 2
    assert report["skip_examples"]["unexpected_error"] == ["1: ZeroDivisionError: a decoder bug"]


def test_keys_that_are_not_utf8_are_stored_spelled_out(tmp_path) -> None:
    folder = os.path.join(os.fsencode(tmp_path), b"in")
    os.mkdir(folder)
    with open(os.path.join(folder, b"caf\xe9.png"), "wb") as fh:  # a latin-1 file name
        fh.write(_png())
    with open(os.path.join(folder, b"caf\xe9.txt"), "wb") as fh:
        fh.write(b"a cafe")
    out = str(tmp_path / "out")
    report = optimize_corpus(open_source([os.fsdecode(folder)]), out, OPTIONS)
    assert report["kept_total"] == 1 and _stored(out)[0][0] == "caf\\udce9"
    assert storable_key("plain/key") == "plain/key"


def _crashing_corpus(tmp_path, monkeypatch) -> tuple[str, bytes]:
    """9 images in 3 units of 3; decoding image 4 kills the process it runs in (like a segfault would)."""
    monkeypatch.setattr(sources, "FILES_PER_UNIT", 3)
    (tmp_path / "in").mkdir()
    for i in range(9):
        (tmp_path / "in" / f"{i}.png").write_bytes(_png(color=(i * 25, 0, 0)))
        (tmp_path / "in" / f"{i}.txt").write_text(f"box {i}")
    return str(tmp_path / "in"), (tmp_path / "in" / "4.png").read_bytes()


def _poisoned(monkeypatch, poison: bytes) -> None:
    real, test_process = unit_writer.clean_image, os.getpid()

    def clean_image(data, policy):
        if data == poison:
            if os.getpid() == test_process:  # never kill pytest itself: a plain error shows the test failed
                raise RuntimeError("the poison sample was decoded in the test process")
            os.kill(os.getpid(), signal.SIGKILL)
        return real(data, policy)

    monkeypatch.setattr(unit_writer, "clean_image", clean_image)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash re-check forks")
def test_resume_gets_past_the_sample_that_killed_the_run(tmp_path, monkeypatch) -> None:
    folder, poison = _crashing_corpus(tmp_path, monkeypatch)
    _poisoned(monkeypatch, poison)
    out = str(tmp_path / "out")
    with pytest.raises(IngestStopped, match=r"worker process died \(killed by signal 9\) on unit 1.*--resume"):
        optimize_corpus(open_source([folder]), out, OPTIONS, num_workers=2,
                        resume_command="genlip optimize --input in --output out --resume")
    # the same crash on resume would stop it again: the sample is re-checked in a child first, and skipped
    report = optimize_corpus(open_source([folder]), out, OPTIONS, num_workers=2, mode="resume")
    assert report["skipped"] == {"crashed_decoder": 1} and report["kept_total"] == 8
    assert "4: the run before stopped on this sample; re-checked, it killed by signal 9" in \
        report["skip_examples"]["crashed_decoder"][0]
    assert [c for _, c, _ in _stored(out)] == [f"box {i}" for i in range(9) if i != 4]
    assert not [f for f in os.listdir(os.path.join(out, ".genlip_work")) if f.endswith(".at")]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the crash re-check forks")
def test_a_sample_that_was_only_interrupted_is_kept(tmp_path, monkeypatch) -> None:
    """A run stopped from outside mid-unit: the re-check passes and the output equals an uninterrupted run."""
    folder, stop_here = _crashing_corpus(tmp_path, monkeypatch)
    reference = str(tmp_path / "reference")
    optimize_corpus(open_source([folder]), reference, OPTIONS)
    real = unit_writer.clean_image

    def interrupted(data, policy):
        if data == stop_here:
            raise KeyboardInterrupt  # Ctrl-C while this sample was being decoded
        return real(data, policy)

    monkeypatch.setattr(unit_writer, "clean_image", interrupted)
    out = str(tmp_path / "out")
    with pytest.raises(IngestStopped, match="interrupted after 1 of 3 units"):
        optimize_corpus(open_source([folder]), out, OPTIONS)
    assert os.path.exists(os.path.join(out, ".genlip_work", "unit-1.at"))  # where it stopped: sample 1 of unit 1
    monkeypatch.setattr(unit_writer, "clean_image", real)
    report = optimize_corpus(open_source([folder]), out, OPTIONS, mode="resume")
    assert report["skipped"] == {} and _stored(out) == _stored(reference)
