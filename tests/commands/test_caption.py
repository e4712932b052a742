"""`genlip caption` at scale: folders and globs, input order, batches, bad files reported and skipped, exit status.

A stand-in captioner (it names each image's dominant colour) replaces the checkpoint, so every line can be
checked against its image; tests/commands/test_cli.py captions with a real trained checkpoint.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from genlip_lit.cli import main
from genlip_lit.commands import common
from genlip_lit.data.transforms import Preprocessing


class ColourCaptioner:
    """Says "red" or "blue" per image, from the normalized pixels it gets; records its batch sizes."""

    is_generative = True
    device = torch.device("cpu")

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def generate_captions(self, pixels, max_new_tokens=None, temperature=0.0, top_p=1.0, generator=None):
        assert pixels.dtype == torch.float32 and pixels.shape[1:] == (3, 16, 16)
        self.batch_sizes.append(len(pixels))
        return ["red" if float(p[0].mean()) > float(p[2].mean()) else "blue" for p in pixels]


@pytest.fixture
def captioner(monkeypatch) -> ColourCaptioner:
    model = ColourCaptioner()
    loaded = []

    def load_module(ckpt, device_name="auto"):
        loaded.append(ckpt)
        return model, Preprocessing(16), {}

    monkeypatch.setattr(common, "load_module", load_module)
    model.loaded = loaded
    return model


def _image(path, colour) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), colour).save(path)
    return str(path)


RED, BLUE = (220, 10, 10), (10, 10, 220)


def _run(argv, capsys) -> tuple[int, list[str], str]:
    code = main(["caption", "--ckpt", "run", *argv])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_a_folder_with_a_bad_file_gives_the_good_captions_and_names_the_skip(tmp_path, captioner, capsys) -> None:
    red = _image(tmp_path / "photos" / "a_red.png", RED)
    blue = _image(tmp_path / "photos" / "c_blue.jpg", BLUE)
    bad = tmp_path / "photos" / "b_broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    (tmp_path / "photos" / "readme.txt").write_text("ignored: no image extension")
    code, out, err = _run([str(tmp_path / "photos")], capsys)
    assert code == 0
    assert out == [f"{red}\tred", f"{blue}\tblue"]
    skips = [line for line in err.splitlines() if "skipped " + str(bad) in line]
    assert len(skips) == 1 and ("corrupt image" in skips[0] or "not an image" in skips[0])
    assert "captioned 2 image(s), skipped 1" in err
    assert "ignored 1 file(s)" in err


def test_globs_files_and_order_across_batches(tmp_path, captioner, capsys) -> None:
    reds = [_image(tmp_path / "scans" / f"r{i}.png", RED) for i in range(3)]
    blue = _image(tmp_path / "blue.png", BLUE)
    _image(tmp_path / "scans" / "other.jpg", BLUE)  # not matched by the glob
    code, out, err = _run([blue, str(tmp_path / "scans" / "*.png"), "--batch-size", "2",
                           "--output", str(tmp_path / "out")], capsys)
    assert code == 0 and "skipped" not in err
    assert out == [f"{blue}\tblue", *[f"{r}\tred" for r in reds]]
    assert captioner.batch_sizes == [2, 2]
    assert (tmp_path / "out" / "captions.tsv").read_text().splitlines() == out


def test_subfolders_only_with_recursive(tmp_path, captioner, capsys) -> None:
    top = _image(tmp_path / "album" / "top.png", RED)
    inner = _image(tmp_path / "album" / "2024" / "inner.png", BLUE)
    assert _run([str(tmp_path / "album")], capsys)[1] == [f"{top}\tred"]
    # sorted by path, like `find album | sort`: album/2024/inner.png comes before album/top.png
    assert _run([str(tmp_path / "album"), "--recursive"], capsys)[1] == [f"{inner}\tblue", f"{top}\tred"]


def test_nothing_captioned_is_an_error_and_a_typo_fails_before_loading(tmp_path, captioner, capsys) -> None:
    fake = tmp_path / "photo.png"
    fake.write_text("this is not a png")
    with pytest.raises(SystemExit) as info:
        main(["caption", "--ckpt", "run", str(fake)])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "Traceback" not in err
    assert f"skipped {fake}: not an image" in err and "no image captioned: all 1 input file(s) were skipped" in err
    with pytest.raises(SystemExit) as info:
        main(["caption", "--ckpt", "run", str(tmp_path / "nope.png"), str(fake)])
    assert info.value.code == 2 and "image file not found" in capsys.readouterr().err
    assert captioner.loaded == ["run"]  # the mistyped path stopped the second run before the model was read


def test_help_documents_inputs_and_preprocessing(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["caption", "--help"])
    text = capsys.readouterr().out
    for words in ("--recursive", "globs", "shorter side resized", "CENTRE CROP", "skipped", "Exit status"):
        assert words in text, words
