"""Per-sample cleaning for `genlip optimize --input`: skip reasons, mode conversions, orientation, resizing,
captions and labels."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from genlip_lit.ingest import cleaning
from genlip_lit.ingest.cleaning import (
    SKIP_REASONS,
    ImagePolicy,
    Skip,
    cap_caption,
    clean_caption,
    clean_image,
    clean_label,
    to_rgb,
)

PNG = ImagePolicy(image_format="png")  # lossless output where exact pixels are compared


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def noise(w: int, h: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def smooth(w: int, h: int) -> Image.Image:
    """A gradient: survives JPEG and resizing with little change, so mean colours can be compared."""
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, axis=0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, axis=1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8))


def decoded(data: bytes) -> np.ndarray:
    """Stored bytes -> pixels, checking they are 8-bit RGB."""
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "RGB"
        return np.asarray(img)


def skip_reason(data: bytes, policy: ImagePolicy = PNG) -> str:
    with pytest.raises(Skip) as info:
        clean_image(data, policy)
    assert info.value.reason in SKIP_REASONS
    return info.value.reason


def png_with_header_size(width: int, height: int) -> bytes:
    """A valid 16x16 PNG whose IHDR claims another size (CRC recomputed, so only the size is a lie)."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (1, 2, 3))))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


# --- bad images -> skip reasons ---------------------------------------------------------------------------


def test_zero_bytes_are_an_empty_file() -> None:
    assert skip_reason(b"") == "empty_file"


def test_html_error_page_is_not_an_image() -> None:
    assert skip_reason(b"<html><body><h1>404 Not Found</h1></body></html>") == "not_an_image"
    assert skip_reason(b"\x00" * 64) == "not_an_image"


def test_truncated_jpeg_is_corrupt() -> None:
    data = encode(noise(64, 64), "JPEG", quality=90)
    clean_image(data, PNG)  # the whole file is fine
    assert skip_reason(data[: len(data) // 2]) == "corrupt_image"


def test_png_with_damaged_pixel_data_is_corrupt() -> None:
    data = bytearray(encode(noise(32, 32)))
    start = data.index(b"IDAT")
    (length,) = struct.unpack(">I", data[start - 4 : start])
    # keep the zlib header, garble the deflate stream, and fix the chunk CRC so the decoder itself must fail
    data[start + 6 : start + 4 + length] = b"\xff" * (length - 2)
    data[start + 4 + length : start + 8 + length] = struct.pack(">I", zlib.crc32(bytes(data[start : start + 4 + length])))
    assert skip_reason(bytes(data)) == "corrupt_image"


def test_decompression_bomb_is_judged_from_the_header() -> None:
    # 10^10 pixels: PIL's own guard trips before our limit is even consulted
    assert skip_reason(png_with_header_size(100_000, 100_000)) == "too_many_pixels"
    # 10^8 pixels: over our default limit but under PIL's hard limit (twice its warning threshold)
    with pytest.raises(Skip, match="10000x10000") as info:
        clean_image(png_with_header_size(10_000, 10_000), PNG)
    assert info.value.reason == "too_many_pixels"


def test_max_pixels_policy() -> None:
    policy = ImagePolicy(max_pixels=10_000, image_format="png")
    assert skip_reason(encode(noise(200, 200)), policy) == "too_many_pixels"
    _, w, h = clean_image(encode(noise(100, 100)), policy)  # exactly at the limit is allowed
    assert (w, h) == (100, 100)


def test_tiny_images_are_too_small() -> None:
    assert skip_reason(encode(Image.new("RGB", (1, 1)))) == "too_small"
    assert skip_reason(encode(Image.new("RGB", (200, 15)))) == "too_small"  # the shorter side counts
    assert skip_reason(encode(Image.new("RGB", (40, 40))), ImagePolicy(min_side=64)) == "too_small"
    assert clean_image(encode(Image.new("RGB", (16, 200))), PNG)[1:] == (16, 200)


def test_skip_reasons_are_checked() -> None:
    skip = Skip("too_small", "1x1")
    assert (skip.reason, skip.detail, str(skip)) == ("too_small", "1x1", "too_small: 1x1")
    with pytest.raises(AssertionError):
        Skip("no_such_reason")


# --- modes -> 8-bit RGB -------------------------------------------------------------------------------------


def test_cmyk_jpeg_and_tiff_become_rgb() -> None:
    cmyk = Image.new("CMYK", (32, 32), (0, 0, 0, 0))  # no ink: white
    cmyk.paste((255, 0, 0, 0), (0, 0, 16, 32))  # full cyan on the left half
    tiff, w, h = clean_image(encode(cmyk, "TIFF"), PNG)
    pixels = decoded(tiff)
    assert (w, h) == (32, 32) and pixels.shape == (32, 32, 3)
    assert pixels[5, 5].tolist() == [0, 255, 255] and pixels[5, 25].tolist() == [255, 255, 255]
    jpeg = decoded(clean_image(encode(cmyk, "JPEG", quality=95), PNG)[0])  # lossy: close, not exact
    assert np.abs(jpeg[5, 5].astype(int) - [0, 255, 255]).max() <= 8
    assert np.abs(jpeg[5, 25].astype(int) - [255, 255, 255]).max() <= 8


def test_16_bit_grayscale_is_rescaled_not_clipped() -> None:
    values = np.zeros((20, 20), dtype=np.uint16)
    values[:5] = 65535
    values[5:10] = 32768
    values[10:15] = 1000  # clipping to 8 bits would make this 255; rescaling makes it 4
    img = Image.fromarray(values)
    assert img.mode == "I;16"
    data = encode(img)
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    pixels = decoded(clean_image(data, PNG)[0])
    assert pixels[0].tolist() == [[255, 255, 255]] * 20
    assert pixels[7, 0].tolist() == [128, 128, 128]
    assert pixels[12, 0].tolist() == [4, 4, 4]
    assert pixels[17, 0].tolist() == [0, 0, 0]


def test_32_bit_and_float_images_are_stretched() -> None:
    ints = Image.fromarray(np.array([[-100, 0], [100, 100]], dtype=np.int32), mode="I")
    assert np.asarray(to_rgb(ints))[:, :, 0].tolist() == [[0, 128], [255, 255]]
    flat = Image.fromarray(np.full((2, 2), 3.5, dtype=np.float32), mode="F")
    assert np.asarray(to_rgb(flat)).max() == 0  # no range to stretch: black, not a division by zero


def palette_image() -> Image.Image:
    img = Image.new("P", (32, 32), 0)
    img.putpalette([10, 20, 30, 200, 100, 50, 0, 0, 0] + [0, 0, 0] * 253)
    img.paste(1, (0, 0, 16, 32))
    return img


def test_palette_png_becomes_rgb() -> None:
    data = encode(palette_image())
    assert Image.open(io.BytesIO(data)).mode == "P"
    pixels = decoded(clean_image(data, PNG)[0])
    assert pixels[3, 3].tolist() == [200, 100, 50] and pixels[3, 28].tolist() == [10, 20, 30]


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    data = encode(palette_image(), transparency=0)  # index 0 (the right half) is transparent
    with Image.open(io.BytesIO(data)) as img:
        assert img.mode == "P" and "transparency" in img.info
    pixels = decoded(clean_image(data, PNG)[0])
    assert pixels[3, 3].tolist() == [200, 100, 50] and pixels[3, 28].tolist() == [255, 255, 255]


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:10] = (255, 0, 0, 0)  # fully transparent red: must not show
    rgba[10:15] = (10, 20, 30, 255)
    rgba[15:] = (0, 0, 0, 128)  # half-transparent black over white: mid gray
    pixels = decoded(clean_image(encode(Image.fromarray(rgba, mode="RGBA")), PNG)[0])
    assert pixels[0, 0].tolist() == [255, 255, 255]
    assert pixels[12, 0].tolist() == [10, 20, 30]
    assert all(abs(v - 127) <= 1 for v in pixels[17, 0].tolist())


def test_grayscale_and_gray_alpha_become_rgb() -> None:
    gray = decoded(clean_image(encode(Image.new("L", (20, 20), 77)), PNG)[0])
    assert gray.shape == (20, 20, 3) and (gray == 77).all()
    la = np.zeros((20, 20, 2), dtype=np.uint8)
    la[:10] = (50, 255)
    la[10:] = (50, 0)
    pixels = decoded(clean_image(encode(Image.fromarray(la, mode="LA")), PNG)[0])
    assert pixels[0, 0].tolist() == [50, 50, 50] and pixels[15, 0].tolist() == [255, 255, 255]
    bilevel = decoded(clean_image(encode(Image.new("1", (20, 20), 1)), PNG)[0])
    assert (bilevel == 255).all()


# --- orientation, resizing, passthrough ----------------------------------------------------------------------


def rotated_jpeg(w: int, h: int, orientation: int) -> bytes:
    """Left half red, right half blue, stored sideways with an EXIF orientation tag."""
    pixels = np.zeros((h, w, 3), dtype=np.uint8)
    pixels[:, : w // 2] = (255, 0, 0)
    pixels[:, w // 2 :] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied() -> None:
    data = rotated_jpeg(64, 32, orientation=6)  # "rotate 90 degrees clockwise to display"
    out, w, h = clean_image(data, PNG)
    assert out != data and (w, h) == (32, 64)
    pixels = decoded(out)
    assert pixels.shape == (64, 32, 3)
    assert pixels[5, 16].argmax() == 0 and pixels[58, 16].argmax() == 2  # left half (red) ends up on top


def test_exif_orientation_with_shrinking() -> None:
    out, w, h = clean_image(rotated_jpeg(200, 100, orientation=6), ImagePolicy(max_side=50, image_format="png"))
    assert (w, h) == (25, 50) and decoded(out).shape == (50, 25, 3)


@pytest.mark.parametrize(
    ("size", "max_side", "expected"),
    [((300, 120), 100, (100, 40)), ((120, 300), 100, (40, 100)), ((333, 100), 100, (100, 30)),
     ((90, 60), 100, (90, 60)), ((100, 100), 100, (100, 100))],
)
def test_resize_keeps_aspect_ratio(size, max_side, expected) -> None:
    out, w, h = clean_image(encode(smooth(*size)), ImagePolicy(max_side=max_side, image_format="png"))
    assert (w, h) == expected
    assert decoded(out).shape == (expected[1], expected[0], 3)


def test_small_rgb_images_keep_their_exact_bytes() -> None:
    jpeg = encode(noise(64, 48), "JPEG", quality=80)
    assert clean_image(jpeg, ImagePolicy()) == (jpeg, 64, 48)
    assert clean_image(jpeg, ImagePolicy(max_side=64)) == (jpeg, 64, 48)  # already within max_side
    png = encode(noise(40, 30))
    assert clean_image(png, ImagePolicy()) == (png, 40, 30)  # any re-encoding format: no second pass
    webp = encode(noise(40, 30), "WEBP", quality=80)
    assert clean_image(webp, PNG) == (webp, 40, 30)


def test_images_needing_work_are_reencoded() -> None:
    gray_jpeg = encode(Image.new("L", (40, 30), 90), "JPEG")
    out, w, h = clean_image(gray_jpeg, ImagePolicy())
    assert out != gray_jpeg and (w, h) == (40, 30)
    with Image.open(io.BytesIO(out)) as img:
        assert (img.format, img.mode) == ("JPEG", "RGB")
    tiff = encode(noise(40, 30), "TIFF")  # RGB, but not a stored format
    out, _, _ = clean_image(tiff, ImagePolicy(image_format="webp"))
    with Image.open(io.BytesIO(out)) as img:
        assert img.format == "WEBP"
    out, _, _ = clean_image(tiff, PNG)
    assert np.array_equal(decoded(out), np.asarray(Image.open(io.BytesIO(tiff))))  # lossless round trip


@pytest.mark.parametrize(("size", "max_side", "expected"),
                         [((800, 800), 100, (100, 100)), ((1600, 1200), 200, (200, 150)), ((1000, 700), 100, (100, 70))])
def test_big_jpeg_shrink_uses_draft_and_gives_the_target_size(size, max_side, expected) -> None:
    # 800 -> 100 and 1600 -> 200 are exact 1/8 DCT scales: the draft decode alone already has the target size
    src = smooth(*size)
    data = encode(src, "JPEG", quality=95)
    out, w, h = clean_image(data, ImagePolicy(max_side=max_side))
    assert (w, h) == expected
    assert out != data
    pixels = decoded(out)
    assert pixels.shape == (expected[1], expected[0], 3)
    reference = np.asarray(src.resize(expected, Image.Resampling.BICUBIC), dtype=np.float64)
    assert np.abs(pixels.astype(np.float64) - reference).mean() < 4


# --- encoding: a sample problem, never a run problem ---------------------------------------------------------


def test_palette_png_too_wide_for_jpeg_is_skipped() -> None:
    """A 70000x16 palette PNG decodes fine but JPEG holds at most 65500 px a side: it used to stop the run."""
    data = encode(Image.new("P", (70000, 16)))
    with pytest.raises(Skip, match="jpeg holds at most 65500 px") as info:
        clean_image(data, ImagePolicy(image_format="jpeg"))
    assert info.value.reason == "too_large_for_format"
    assert clean_image(data, ImagePolicy(image_format="jpeg", max_side=4000))[1:] == (4000, 1)  # shrunk: fits
    assert clean_image(data, PNG)[1:] == (70000, 16)  # PNG has room


def test_webp_over_its_side_limit_is_skipped() -> None:
    data = encode(Image.new("L", (16384, 16), 90))
    assert skip_reason(data, ImagePolicy(image_format="webp")) == "too_large_for_format"
    assert clean_image(encode(Image.new("L", (16383, 16), 90)), ImagePolicy(image_format="webp"))[1:] == (16383, 16)


def test_encoder_failure_is_a_skip(monkeypatch) -> None:
    def broken_save(self, fp, format=None, **params):  # noqa: A002 - PIL's own argument name
        raise OSError("broken data stream when writing image file")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(Skip, match="broken data stream") as info:
        cleaning.encode_image(Image.new("RGB", (32, 32)), ImagePolicy())
    assert info.value.reason == "encode_failed"


# --- captions ------------------------------------------------------------------------------------------------


def caption_skip(value) -> str:
    with pytest.raises(Skip) as info:
        clean_caption(value)
    return info.value.reason


def test_caption_skips() -> None:
    assert caption_skip("") == "empty_caption"
    assert caption_skip(" \n\t ") == "empty_caption"
    assert caption_skip(b"  ") == "empty_caption"
    assert caption_skip(None) == "missing_caption"
    assert caption_skip(b"caf\xe9") == "caption_not_utf8"  # latin-1, not UTF-8
    assert caption_skip("lone \ud800 surrogate") == "caption_not_utf8"  # JSON "\\ud800": no UTF-8 spelling


def test_long_captions_are_cut_at_a_word() -> None:
    long = clean_caption(b"word " * 40_000)  # 200 KB (tests/ingest/test_unit_writer.py stores a 10 MB one)
    text, cut = cap_caption(long, 10_000)
    assert cut and len(text) <= 10_000 and text.endswith("word") and len(text) > 9_900
    assert cap_caption("short", 10) == ("short", False) and cap_caption("x" * 50, None) == ("x" * 50, False)
    assert cap_caption("y" * 30, 20) == ("y" * 20, True)  # no space near the end: a hard cut


def test_caption_text_is_normalised() -> None:
    assert clean_caption("a dog\non the\t\tbeach  ") == "a dog on the beach"
    assert clean_caption("  two\r\n\r\nlines ") == "two lines"
    assert clean_caption("caf\u00e9".encode()) == "caf\u00e9"
    assert clean_caption(b"\xef\xbb\xbfa red square") == "a red square"  # UTF-8 with a byte-order mark
    assert clean_caption(memoryview(b"bytes view")) == "bytes view"
    assert clean_caption(42) == "42"
    assert clean_caption("punctuation, CASE & emoji \U0001f600 stay") == "punctuation, CASE & emoji \U0001f600 stay"


# --- labels --------------------------------------------------------------------------------------------------


def test_labels() -> None:
    assert clean_label(7, None) == 7
    assert clean_label(np.int64(7), None) == 7
    assert clean_label("7", None) == 7
    assert clean_label(" -3 ", None) == -3
    assert clean_label(b"7\n", None) == 7  # a webdataset .cls sidecar
    assert clean_label(7.0, None) == 7
    assert clean_label(None, None) == -1
    assert clean_label("", None) == -1
    assert clean_label("  ", None) == -1
    assert clean_label(b"", None) == -1  # an empty .cls sidecar, like an empty string
    assert clean_label(2**63 - 1, None) == 2**63 - 1 and clean_label(str(-(2**63)), None) == -(2**63)  # int64 ends


def test_labels_by_class_name() -> None:
    class_ids = {"cat": 0, "dog": 1, "7": 3}
    assert clean_label("dog", class_ids) == 1
    assert clean_label(b"cat", class_ids) == 0
    assert clean_label("7", class_ids) == 3  # a class name wins over reading it as a number
    assert clean_label("5", class_ids) == 5
    with pytest.raises(Skip, match="not among the 3 names") as info:
        clean_label("zebra", class_ids)
    assert info.value.reason == "bad_label"


@pytest.mark.parametrize("value", [True, False, "zebra", 7.5, float("nan"), "7.0", [1], 2**63, "-9223372036854775809",
                                   1e19])
def test_bad_labels(value) -> None:
    with pytest.raises(Skip) as info:
        clean_label(value, None)
    assert info.value.reason == "bad_label"


# --- policy --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_side": 0}, "max_side"),
        ({"min_side": 0}, "min_side"),
        ({"max_side": 8, "min_side": 16}, "below min_side"),
        ({"max_pixels": 0}, "max_pixels"),
        ({"image_format": "gif"}, "image_format"),
        ({"quality": 0}, "quality"),
        ({"quality": 101}, "quality"),
    ],
)
def test_policy_rejects_bad_values(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        ImagePolicy(**kwargs)


def test_policy_defaults_are_valid() -> None:
    policy = ImagePolicy()
    assert (policy.max_side, policy.image_format) == (None, "jpeg")
    assert ImagePolicy(max_side=16, min_side=16).max_side == 16
