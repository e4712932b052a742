"""`genlip optimize --input`: four layouts -> equal shards, bad samples counted by reason, resume and append."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from genlip_lit.commands import optimize as opt
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest import corpus
from genlip_lit.ingest.cleaning import ImagePolicy
from genlip_lit.ingest.corpus import IngestOptions, optimize_corpus, split_of
from genlip_lit.ingest.demo_corpus import LAYOUTS, write_demo_corpus
from genlip_lit.ingest.layouts import open_source

OPTIONS = IngestOptions(policy=ImagePolicy(max_side=96), val_fraction=0.1, chunk_bytes="256KB")


def _rows(out: str) -> list[tuple[str, str, str, int]]:
    """(split, caption, image sha1, label) of every stored sample, in stored order."""
    import litdata

    rows = []
    for split in ("train", "val"):
        if not os.path.exists(os.path.join(out, split, "index.json")):
            continue
        ds = litdata.StreamingDataset(os.path.join(out, split))
        for i in range(len(ds)):
            s = ds[i]
            rows.append((split, s["caption"], hashlib.sha1(s["image"]).hexdigest(), s["label"]))
    return rows


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, str]:
    return write_demo_corpus(str(tmp_path_factory.mktemp("demo")), num_images=200)


@pytest.fixture(scope="module")
def wds_out(demo, tmp_path_factory) -> tuple[str, dict]:
    out = str(tmp_path_factory.mktemp("wds") / "out")
    report = optimize_corpus(open_source([demo["webdataset"]]), out, OPTIONS, num_workers=2)
    return out, report


def test_all_layouts_give_the_same_shards(demo, wds_out, tmp_path) -> None:
    out, report = wds_out
    reference = _rows(out)
    assert len(reference) == 200 and report["kept_total"] == 200 and report["skipped_total"] == 0
    assert report["kept"]["val"] == sum(r[0] == "val" for r in reference) > 0
    for layout in LAYOUTS[1:]:
        other = str(tmp_path / layout)
        optimize_corpus(open_source([demo[layout]]), other, OPTIONS, num_workers=1)
        assert _rows(other) == reference, layout
    # every stored image fits max_side and is what the ingest step made of the source
    import litdata

    sample = litdata.StreamingDataset(os.path.join(out, "train"))[0]
    img = Image.open(io.BytesIO(sample["image"]))
    assert img.mode == "RGB" and max(img.size) <= 96 and sample["key"].startswith("00000.tar/")


def test_report_meta_and_split_rule(wds_out) -> None:
    out, report = wds_out
    on_disk = json.load(open(os.path.join(out, corpus.REPORT_FILE)))
    assert on_disk == report and report["units"] == 2 and report["images_per_s"] > 0
    assert report["bytes_out"] < report["bytes_in"]  # shrunk to max_side
    meta = json.load(open(os.path.join(out, corpus.META_FILE)))
    assert meta["source"] == "webdataset" and meta["num_train"] + meta["num_val"] == 200
    assert meta["fields"] == ["image", "caption", "key", "label"]
    # the split is a pure function of the stored bytes: stable across runs, layouts and duplicates
    assert split_of(b"same bytes", 0.5) == split_of(b"same bytes", 0.5)
    assert split_of(b"x", 0.0) == "train"
    share = np.mean([split_of(str(i).encode(), 0.2) == "val" for i in range(5000)])
    assert 0.17 < share < 0.23


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _jpeg(size=(40, 30), color=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def test_bad_samples_are_skipped_and_counted_by_reason(tmp_path, capsys) -> None:
    good = _jpeg()
    shard = tmp_path / "in" / "00000.tar"
    shard.parent.mkdir()
    cases = [
        ("ok1", "jpg", good, b"a red box"),
        ("empty", "jpg", b"", b"caption"),
        ("html", "jpg", b"<html>404</html>", b"caption"),
        ("cut", "jpg", good[: len(good) // 2], b"caption"),
        ("tiny", "png", _png((1, 1)), b"caption"),
        ("blank", "jpg", good, b"  \n\t "),
        ("latin1", "jpg", good, b"caf\xe9"),
        ("ok2", "png", _png((32, 32), mode="RGBA"), b"a transparent square"),
    ]
    with tarfile.open(shard, "w") as tar:
        for key, ext, image, caption in cases:
            _add(tar, f"{key}.{ext}", image)
            _add(tar, f"{key}.txt", caption)
        _add(tar, "nocaption.jpg", good)
        _add(tar, "noimage.txt", b"caption without image")
    out = tmp_path / "out"
    assert opt.main(["--input", str(shard.parent), "--output", str(out), "--num-workers", "1"]) == 0
    line = capsys.readouterr().out
    report = json.load(open(out / corpus.REPORT_FILE))
    assert report["kept_total"] == 2
    assert report["skipped"] == {
        "caption_not_utf8": 1,
        "corrupt_image": 1,
        "empty_caption": 1,
        "empty_file": 1,
        "missing_caption": 1,
        "missing_image": 1,
        "not_an_image": 1,
        "too_small": 1,
    }
    assert report["skip_examples"]["corrupt_image"][0].startswith("00000.tar/cut")
    assert "kept 2" in line and "skipped 8" in line and "corrupt_image 1" in line


def _png(size, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_truncated_shard_keeps_what_it_read(demo, tmp_path) -> None:
    src = os.path.join(demo["webdataset"], "00001.tar")
    data = open(src, "rb").read()
    broken = tmp_path / "in" / "00001.tar"
    broken.parent.mkdir()
    broken.write_bytes(data[: len(data) // 2])
    report = optimize_corpus(open_source([os.path.join(demo["webdataset"], "00000.tar"), str(broken)]),
                             str(tmp_path / "out"), OPTIONS)
    assert report["skipped"] == {"unreadable_shard": 1}
    assert 100 < report["kept_total"] < 200  # all of shard 0 and the intact head of shard 1


def test_structural_errors_come_before_any_work(demo, tmp_path) -> None:
    out = tmp_path / "out"
    with pytest.raises(GenLIPUserError, match="no caption column \\['re_caption'\\]"):
        optimize_corpus(open_source([demo["parquet"]], caption_fields=["re_caption"]), str(out), OPTIONS)
    assert not out.exists()
    with pytest.raises(GenLIPUserError, match="--val-fraction"):
        IngestOptions(val_fraction=1.0)


def test_existing_output_resume_and_append(demo, tmp_path, monkeypatch) -> None:
    tars = [os.path.join(demo["webdataset"], f"0000{i}.tar") for i in (0, 1)]
    whole = str(tmp_path / "whole")
    optimize_corpus(open_source(tars), whole, OPTIONS)
    out = str(tmp_path / "out")

    # interrupt after the first unit: the run stops, leaving a resumable state
    real = corpus.process_unit
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(corpus, "process_unit", flaky)
    with pytest.raises(GenLIPUserError, match="--resume"):
        optimize_corpus(open_source(tars), out, OPTIONS)
    monkeypatch.setattr(corpus, "process_unit", real)
    assert not os.path.exists(os.path.join(out, corpus.META_FILE))
    with pytest.raises(GenLIPUserError, match="interrupted run \\(1 of 2 units done\\)"):
        optimize_corpus(open_source(tars), out, OPTIONS)
    with pytest.raises(GenLIPUserError, match="differ"):
        optimize_corpus(open_source(tars[:1]), out, OPTIONS, mode="resume")
    report = optimize_corpus(open_source(tars), out, OPTIONS, mode="resume")
    assert report["units_from_earlier_runs"] == 1 and report["images_this_run"] == 100
    assert _rows(out) == _rows(whole)

    # finished: a plain rerun is refused, --append adds new inputs (not the same ones twice)
    with pytest.raises(GenLIPUserError, match="--append"):
        optimize_corpus(open_source(tars), out, OPTIONS)
    with pytest.raises(GenLIPUserError, match="already went into"):
        optimize_corpus(open_source(tars[:1]), out, OPTIONS, mode="append")
    report = optimize_corpus(open_source([demo["folder"]]), out, OPTIONS, mode="append")
    assert report["kept_total"] == 400 and report["units"] == 3
    rows, before = _rows(out), _rows(whole)
    assert len(rows) == 400
    for split in ("train", "val"):  # appended samples come after the earlier ones in each split
        old = [r for r in before if r[0] == split]
        assert [r for r in rows if r[0] == split][: len(old)] == old

    # overwrite starts over; a directory of someone else's files is never deleted
    report = optimize_corpus(open_source(tars[:1]), out, OPTIONS, mode="overwrite")
    assert report["kept_total"] == 100
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(GenLIPUserError, match="not empty"):
        optimize_corpus(open_source(tars[:1]), str(mine), OPTIONS)
    with pytest.raises(GenLIPUserError, match="refusing"):
        optimize_corpus(open_source(tars[:1]), str(mine), OPTIONS, mode="overwrite")
    assert (mine / "notes.txt").read_text() == "keep me"


def test_string_labels_through_a_class_list(tmp_path) -> None:
    images = tmp_path / "in"
    images.mkdir()
    rows = []
    for i, name in enumerate(["cat", "dog", "cat", "owl"]):
        (images / f"{i}.jpg").write_bytes(_jpeg(color=(i * 40, 10, 10)))
        rows.append(json.dumps({"path": f"{i}.jpg", "text": f"photo {i}", "label": name}))
    (images / "rows.jsonl").write_text("\n".join(rows) + "\n")
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    out = tmp_path / "out"
    argv = ["--input", str(images / "rows.jsonl"), "--output", str(out), "--classes", str(classes),
            "--val-fraction", "0", "--num-workers", "1"]
    assert opt.main(argv) == 0
    assert [r[3] for r in _rows(str(out))] == [0, 1, 0]
    report = json.load(open(out / corpus.REPORT_FILE))
    assert report["skipped"] == {"bad_label": 1} and json.load(open(out / corpus.META_FILE))["class_names"] == [
        "cat", "dog"]
    assert not os.path.exists(out / "val" / "index.json")  # --val-fraction 0: no val split at all


def test_cli_rejects_mixed_modes(tmp_path) -> None:
    with pytest.raises(GenLIPUserError, match="not both"):
        opt.main(["--input", str(tmp_path), "--source", "synthetic", "--output", str(tmp_path / "o")])
    with pytest.raises(GenLIPUserError, match="nothing to read"):
        opt.main(["--output", str(tmp_path / "o")])
