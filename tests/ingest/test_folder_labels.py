"""`genlip optimize --labels folders` (ingest/folder_labels.py): class = top folder (ImageFolder), ImageNet's
train/ + val/ split folders with a flat val/ labelled by a file, classes.txt and class names in the meta, keys that
lead back to the files, and the probes reading the result."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from genlip_lit.commands import optimize as opt
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.labelled import ShardLabelledSet
from genlip_lit.ingest.folder_labels import read_labels_file
from genlip_lit.ingest.layouts import open_source


def _png(seed: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 20), (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)).save(buffer, format="PNG")
    return buffer.getvalue()


def _write(path, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(_png(seed))


def _records(out: str, split: str) -> list[dict]:
    ds = ShardLabelledSet(out, split).dataset
    return [ds[i] for i in range(len(ds))]


def test_class_folders_become_labels_classes_txt_and_meta(tmp_path, capsys) -> None:
    root = tmp_path / "pets"
    for i in range(6):
        _write(str(root / ("dog" if i % 2 else "cat") / f"img{i}.png"), i)
    _write(str(root / "cat" / "kittens" / "deep.png"), 50)  # nested: still the top folder's class
    out = str(tmp_path / "shards")
    assert opt.main(["--input", str(root), "--labels", "folders", "--output", out, "--val-fraction", "0",
                     "--num-workers", "1"]) == 0
    meta = json.load(open(os.path.join(out, "genlip_meta.json")))
    assert meta["class_names"] == ["cat", "dog"]
    assert open(os.path.join(out, "classes.txt")).read() == "cat\ndog\n"
    # optimize names the classes it found: a stray folder shows before any training
    assert f"labels: 2 classes (cat, dog) -> {os.path.join(out, 'classes.txt')}" in capsys.readouterr().out
    by_key = {r["key"]: (r["label"], r["caption"]) for r in _records(out, "train")}
    # keys are the paths below the input root, so a result leads back to its file
    assert by_key == {os.path.join("cat", "img0"): (0, ""), os.path.join("dog", "img1"): (1, ""),
                      os.path.join("cat", "img2"): (0, ""), os.path.join("dog", "img3"): (1, ""),
                      os.path.join("cat", "img4"): (0, ""), os.path.join("dog", "img5"): (1, ""),
                      os.path.join("cat", "kittens", "deep"): (0, "")}
    assert ShardLabelledSet(out, "train").class_names == ["cat", "dog"]


def test_imagenet_layout_with_a_flat_val_folder_and_a_labels_file(tmp_path) -> None:
    root = tmp_path / "CLS-LOC"
    synsets = ["n01440764", "n01443537", "n01484850"]
    for c, synset in enumerate(synsets):
        for j in range(3):
            _write(str(root / "train" / synset / f"{synset}_{j}.JPEG"), 10 * c + j)
    val = {f"ILSVRC2012_val_{k:08d}": synsets[k % 3] for k in range(1, 6)}
    for k, name in enumerate(val):
        _write(str(root / "val" / f"{name}.JPEG"), 100 + k)
    _write(str(root / "val" / "ILSVRC2012_val_00000099.JPEG"), 200)  # in no labels line: a counted skip
    _write(str(root / "test" / "ILSVRC2012_test_00000001.JPEG"), 300)  # unlabelled test/: not read
    labels = tmp_path / "LOC_val_solution.csv"  # Kaggle's file: header, synset first, then boxes
    labels.write_text("ImageId,PredictionString\n" + "".join(
        f"{name},{synset} 1 2 30 40 {synset} 5 6 7 8\n" for name, synset in val.items()))
    out = str(tmp_path / "in1k")
    opt.main(["--input", str(root), "--labels", "folders", "--labels-file", str(labels), "--output", out,
              "--num-workers", "1"])
    report = json.load(open(os.path.join(out, "genlip_report.json")))
    assert report["kept"] == {"train": 9, "val": 5}  # the folders split, not the hash (--val-fraction ignored)
    assert report["skipped"] == {"missing_label": 1}
    assert json.load(open(os.path.join(out, "genlip_meta.json")))["class_names"] == synsets
    train = {r["key"]: r["label"] for r in _records(out, "train")}
    assert train[os.path.join("train", "n01443537", "n01443537_2")] == 1
    assert {r["key"]: r["label"] for r in _records(out, "val")} == {
        os.path.join("val", name): synsets.index(synset) for name, synset in val.items()}


def test_val_in_synset_folders_and_fixed_classes(tmp_path) -> None:
    root = tmp_path / "imagenet"
    for c, synset in enumerate(["b", "a"]):
        _write(str(root / "train" / synset / "x.png"), c)
        _write(str(root / "val" / synset / "y.png"), 10 + c)
    _write(str(root / "val" / "zebra" / "z.png"), 20)  # a class train/ lacks: not in the class list
    classes = tmp_path / "classes.txt"
    classes.write_text("b\na\n")  # --classes fixes the order (the ids of an earlier dataset)
    out = str(tmp_path / "out")
    opt.main(["--input", str(root / "train"), str(root / "val"), "--labels", "folders", "--classes", str(classes),
              "--output", out, "--num-workers", "1"])
    assert {r["key"]: r["label"] for r in _records(out, "val")} == {os.path.join("val", "b", "y"): 0,
                                                                    os.path.join("val", "a", "y"): 1}
    assert json.load(open(os.path.join(out, "genlip_report.json")))["skipped"] == {"bad_label": 1}


def test_labels_file_formats_and_mistakes(tmp_path) -> None:
    path = tmp_path / "labels.txt"
    path.write_text("a.JPEG n1\nb n2 extra words\n\nc.png\tn1\n")
    assert read_labels_file(str(path)) == {"a": "n1", "b": "n2", "c": "n1"}
    path.write_text("a n1\na n2\n")
    with pytest.raises(GenLIPUserError, match=r"labels.txt:2: 'a' is labelled both 'n1' and 'n2'"):
        read_labels_file(str(path))
    path.write_text("a\n")
    with pytest.raises(GenLIPUserError, match=r"labels.txt:1: expected 'IMAGE CLASS'"):
        read_labels_file(str(path))


def test_folder_label_mistakes_are_one_line(tmp_path) -> None:
    _write(str(tmp_path / "only" / "a.png"), 1)
    with pytest.raises(GenLIPUserError, match="1 class found.*at least 2 classes"):
        open_source([str(tmp_path)], labels="folders").class_names()
    with pytest.raises(GenLIPUserError, match="--labels-file goes with --labels folders"):
        open_source([str(tmp_path)], labels_file=str(tmp_path / "x.txt"))
    with pytest.raises(GenLIPUserError, match="two sources of labels"):
        open_source([str(tmp_path)], labels="folders", label_field="cls")
