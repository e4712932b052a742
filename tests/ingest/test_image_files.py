"""ingest/image_files.py: files, folders and globs expand in input order; one file decoded at a time, shrunk to
the model's input at once and never retained; a bad file comes back as a skip with its reason."""

from __future__ import annotations

import gc
import io
import os
import weakref

import pytest
import torch
from PIL import Image

from genlip_lit.data.transforms import Preprocessing
from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.image_files import expand_inputs, load_image, preprocessed_batches


def _save(path, size=(48, 40), colour=(200, 30, 30), fmt=None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, format=fmt)
    return str(path)


def test_folders_files_and_globs_expand_in_input_order(tmp_path) -> None:
    b = _save(tmp_path / "d" / "b.png")
    a = _save(tmp_path / "d" / "a.JPG", fmt="JPEG")
    (tmp_path / "d" / "notes.txt").write_text("not an image")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"")
    deep = _save(tmp_path / "d" / "sub" / "c.png")
    lone = _save(tmp_path / "lone.webp")
    files, ignored = expand_inputs([lone, str(tmp_path / "d")])
    assert files == [lone, a, b] and ignored == 1  # the folder sorted by name, after the file named first
    files, _ = expand_inputs([str(tmp_path / "d"), lone], recursive=True)
    assert files == [a, b, deep, lone]
    files, _ = expand_inputs([str(tmp_path / "d" / "*.png"), b])  # a glob; b named twice: read once
    assert files == [b]
    files, _ = expand_inputs([str(tmp_path / "**" / "*.png")])
    assert files == [b, deep]


def test_names_that_name_nothing_are_user_errors(tmp_path) -> None:
    with pytest.raises(GenLIPUserError, match="image file not found: .*missing.png"):
        expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(GenLIPUserError, match=r"no file matches .*\*.gif"):
        expand_inputs([str(tmp_path / "*.gif")])
    _save(tmp_path / "only_sub" / "inner" / "x.png")
    with pytest.raises(GenLIPUserError, match="holds no images .*--recursive reads them"):
        expand_inputs([str(tmp_path / "only_sub")])


def test_a_large_image_comes_back_model_sized_with_the_centre_crop(tmp_path) -> None:
    # 300 x 100: red left third, green middle, blue right third; the centre crop keeps only green
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 255, 0), (100, 0, 200, 100))
    img.paste((0, 0, 255), (200, 0, 300, 100))
    path = tmp_path / "wide.png"
    img.save(path)
    pixels = load_image(str(path), Preprocessing(32).transform())
    assert pixels.dtype == torch.uint8 and pixels.shape == (3, 32, 32)
    assert pixels[1].float().mean() > 250 and pixels[0].float().mean() < 5 and pixels[2].float().mean() < 5


def test_exif_rotation_and_transparency_are_applied(tmp_path) -> None:
    img = Image.new("RGB", (64, 32), (255, 0, 0))
    img.paste((0, 0, 255), (32, 0, 64, 32))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to view": upright, the picture is 32 wide and 64 tall
    img.save(tmp_path / "rotated.jpg", exif=exif, quality=100)
    upright = load_image(str(tmp_path / "rotated.jpg"), Preprocessing(32).transform())
    # rotated clockwise: red (left) goes to the top, blue to the bottom; the centre crop keeps the middle rows
    assert upright[0, :8].float().mean() > 200 and upright[2, -8:].float().mean() > 200
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    clear.save(tmp_path / "clear.png")
    assert load_image(str(tmp_path / "clear.png"), Preprocessing(32).transform()).min() == 255  # white, not black


def test_bad_files_come_back_as_skips_with_reasons(tmp_path) -> None:
    good = _save(tmp_path / "good.png")
    html = tmp_path / "page.jpg"
    html.write_bytes(b"<html>404</html>")
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buf, format="JPEG")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    big = _save(tmp_path / "big.png", size=(100, 100))
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # would block a plain open() forever
    paths = [str(html), good, str(cut), str(empty), big, str(fifo)]
    batches = list(preprocessed_batches(paths, Preprocessing(32).transform(), batch_size=8, max_pixels=5000))
    assert len(batches) == 1 and batches[0].paths == [good] and batches[0].pixels.shape == (1, 3, 32, 32)
    reasons = dict(batches[0].skipped)
    assert list(reasons) == [str(html), str(cut), str(empty), big, str(fifo)]
    assert reasons[str(html)].startswith("not an image")
    assert reasons[str(cut)].startswith("corrupt image")
    assert reasons[str(empty)].startswith("empty file")
    assert reasons[big].startswith("too many pixels (100x100")
    assert "FIFO" in reasons[str(fifo)]
    assert [b.skipped for b in preprocessed_batches([big], Preprocessing(32).transform(), max_bytes=100)] == [
        [(big, f"the file has {os.path.getsize(big)} bytes, over --max-bytes 100")]]


def test_files_are_read_lazily_in_batches_and_no_decoded_picture_is_retained(tmp_path) -> None:
    """Bounded memory: a batch is built from files read one at a time, and the full-size pictures are gone when
    it is yielded (only model-sized uint8 tensors remain)."""
    paths = [_save(tmp_path / f"{i}.png", size=(400, 300), colour=(i * 40, 0, 0)) for i in range(5)]
    transform = Preprocessing(16).transform()
    decoded: list[weakref.ref] = []
    consumed: list[str] = []

    class Recording:
        def to_uint8(self, img):
            decoded.append(weakref.ref(img))
            return transform.to_uint8(img)

    def lazily():
        for p in paths:
            consumed.append(p)
            yield p

    batches = preprocessed_batches(lazily(), Recording(), batch_size=2)
    first = next(batches)
    assert len(consumed) == 2 and first.paths == paths[:2]  # the other files are not opened yet
    gc.collect()
    assert len(decoded) == 2 and all(ref() is None for ref in decoded)  # the 400x300 pictures are gone
    rest = list(batches)
    assert [b.paths for b in rest] == [paths[2:4], paths[4:]]
    shapes = [tuple(b.pixels.shape) for b in [first, *rest]]
    assert shapes == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    assert [int(b.pixels[i, 0, 0, 0]) for b in [first, *rest] for i in range(len(b.paths))] == [0, 40, 80, 120, 160]
