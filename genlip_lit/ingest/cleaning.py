"""Per-sample cleaning for `genlip optimize`: raw image bytes and caption -> a stored sample, or a skip reason.

Every way a sample can be bad maps to one `Skip` reason, so the optimize report counts them by name:

    empty_file        zero bytes where an image should be
    not_an_image      bytes that no image decoder recognises (an HTML error page saved as .jpg, ...)
    corrupt_image     a recognised format that fails to decode (truncated download, bad data)
    too_many_pixels   width x height over `max_pixels` (decompression bombs), judged from the header alone
    too_small         shorter side under `min_side` (1x1 tracking pixels, icons)
    too_large_for_format  a side over what the output format can hold (JPEG 65500 px, WebP 16383 px)
    encode_failed     the encoder of the output format failed on an image that decoded
    missing_image     the record names no image, or the file it names cannot be read
    missing_caption   the record has no caption in any of the chosen fields
    empty_caption     a caption that is empty or only whitespace
    caption_not_utf8  caption bytes that are not valid UTF-8 (or text with lone surrogates, which UTF-8 cannot hold)
    bad_label         a label that is neither an integer nor a known class name, or outside the int64 range
    missing_label     `--labels folders`: an image outside any class folder that the labels file does not name
    bad_row           a manifest row that does not parse (invalid JSON, more CSV fields than the header)
    unreadable_shard  a tar shard, parquet row group or manifest that fails part-way (counted once per
                      container; the samples it still held are unknown)
    not_a_regular_file, outside_input_root, too_many_bytes
                      files refused before reading (see `safe_read.py`)
    unexpected_error  any other exception while cleaning one sample (the report keeps its message)
    crashed_decoder   the sample an earlier run died on (a decoder crash, out of memory) crashed a test
                      process again when `--resume` re-checked it

Captions are cut at `max_caption_chars` (counted as truncated, not skipped).

Images that decode are normalised to 8-bit RGB (CMYK, 16-bit, palette, alpha and grayscale converted; EXIF
rotation applied), shrunk so the longer side is at most `max_side`, and re-encoded. An image already in that
state (RGB JPEG/PNG/WebP, upright, small enough) keeps its original bytes: no second lossy pass.
"""

from __future__ import annotations

import dataclasses
import io
import re
import warnings
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SKIP_REASONS = (
    "empty_file",
    "not_an_image",
    "corrupt_image",
    "too_many_pixels",
    "too_small",
    "missing_image",
    "missing_caption",
    "empty_caption",
    "caption_not_utf8",
    "bad_label",
    "missing_label",
    "bad_row",
    "unreadable_shard",
    "too_large_for_format",
    "encode_failed",
    "not_a_regular_file",
    "outside_input_root",
    "too_many_bytes",
    "unexpected_error",
    "crashed_decoder",
)
PASSTHROUGH_FORMATS = {"JPEG", "PNG", "WEBP"}
DEFAULT_MAX_PIXELS = 89_478_485  # PIL's own bomb threshold (about 9459 x 9459)
DEFAULT_MAX_CAPTION_CHARS = 10_000  # far above any caption a model reads, far below a pasted book
MAX_SIDE_OF_FORMAT = {"jpeg": 65_500, "webp": 16_383, "png": 2**31 - 1}  # libjpeg's and libwebp's limits
INT64 = (-(2**63), 2**63 - 1)
_WHITESPACE = re.compile(r"\s+")


class Skip(Exception):
    """A bad sample: `reason` is one of `SKIP_REASONS`, `detail` says what exactly was wrong."""

    def __init__(self, reason: str, detail: str = "") -> None:
        assert reason in SKIP_REASONS, reason
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class ImagePolicy:
    """How images are checked and stored."""

    max_side: int | None = None  # shrink so the longer side is at most this (None: keep the size)
    min_side: int = 16  # skip images whose shorter side is smaller
    max_pixels: int = DEFAULT_MAX_PIXELS  # skip images with more pixels than this (decompression bombs)
    image_format: str = "jpeg"  # re-encoding format: jpeg | png | webp
    quality: int = 95  # jpeg / webp quality

    def __post_init__(self) -> None:
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be positive, got {self.max_side}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be at least 1, got {self.min_side}")
        if self.max_side is not None and self.max_side < self.min_side:
            raise ValueError(f"max_side ({self.max_side}) is below min_side ({self.min_side})")
        if self.max_pixels < 1:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.image_format not in ("jpeg", "png", "webp"):
            raise ValueError(f"image_format must be jpeg, png or webp, got {self.image_format!r}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality must be within 1..100, got {self.quality}")


def _open(data: bytes, policy: ImagePolicy) -> Image.Image:
    """Open lazily and check the header (size) before any pixel is decoded."""
    if len(data) == 0:
        raise Skip("empty_file", "0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise Skip("not_an_image", f"{len(data)} bytes, no image format recognised") from exc
    except Image.DecompressionBombError as exc:  # PIL's own guard (we raise its limit below, but be safe)
        raise Skip("too_many_pixels", str(exc)) from exc
    except Exception as exc:  # broken headers raise SyntaxError, OSError, ValueError, ...
        raise Skip("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    w, h = img.size
    if w * h > policy.max_pixels:
        raise Skip("too_many_pixels", f"{w}x{h} is over the limit of {policy.max_pixels} pixels")
    if min(w, h) < policy.min_side:
        raise Skip("too_small", f"{w}x{h}, shorter side under {policy.min_side}")
    return img


def _target_size(w: int, h: int, max_side: int | None) -> tuple[int, int]:
    if max_side is None or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16/32-bit values are rescaled, not clipped."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode == "P" and "transparency" in img.info:
        img, mode = img.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I") or mode == "F":  # I;16 (16-bit PNG/TIFF), I (32-bit), F (float)
        array = np.asarray(img)
        if mode.startswith("I;16"):
            scaled = array.astype(np.float64) / 65535.0
        else:  # integer or float data of unknown range: stretch what is there
            array = array.astype(np.float64)
            low, high = float(array.min()), float(array.max())
            scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
        gray = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV


def clean_image(data: bytes, policy: ImagePolicy) -> tuple[bytes, int, int]:
    """Image bytes -> (stored bytes, width, height); raises `Skip` for a bad image."""
    img = _open(data, policy)
    source_format = img.format
    w, h = img.size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            orientation = img.getexif().get(0x0112, 1) if hasattr(img, "getexif") else 1
            tw, th = _target_size(*((h, w) if orientation in (5, 6, 7, 8) else (w, h)), policy.max_side)
            if source_format == "JPEG" and (tw, th) != (w, h):
                # decode at a reduced DCT scale (still >= the target) when shrinking a lot: much faster
                img.draft("RGB", (tw, th) if orientation not in (5, 6, 7, 8) else (th, tw))
            img.load()
            upright = ImageOps.exif_transpose(img) if orientation != 1 else img
            rgb = to_rgb(upright)
    except Skip:
        raise
    except Exception as exc:  # truncated data, bad chunks, decoder errors
        raise Skip("corrupt_image", f"{type(exc).__name__}: {exc}") from exc
    # compare the original size, not img.size: a JPEG draft decode can already have the target size
    unchanged = rgb is img and (w, h) == (tw, th) and orientation == 1 and source_format in PASSTHROUGH_FORMATS
    if unchanged:
        return bytes(data), w, h
    if rgb.size != (tw, th):
        rgb = rgb.resize((tw, th), resample=Image.Resampling.BICUBIC)
    return encode_image(rgb, policy), tw, th


def encode_image(img: Image.Image, policy: ImagePolicy) -> bytes:
    """RGB image -> bytes in `policy.image_format`; raises `Skip` when the format cannot hold it or the encoder
    fails (a sample problem, never a run problem)."""
    limit = MAX_SIDE_OF_FORMAT[policy.image_format]
    if max(img.size) > limit:
        raise Skip("too_large_for_format",
                   f"{img.width}x{img.height}: {policy.image_format} holds at most {limit} px a side "
                   "(--max-side shrinks it, or --image-format png)")
    buffer = io.BytesIO()
    try:
        if policy.image_format == "jpeg":
            img.save(buffer, format="JPEG", quality=policy.quality, subsampling=0 if policy.quality >= 90 else 2)
        elif policy.image_format == "webp":
            img.save(buffer, format="WEBP", quality=policy.quality, method=4)
        else:
            img.save(buffer, format="PNG", compress_level=6)
    except Exception as exc:  # encoder errors are OSError, ValueError, ... depending on the plugin
        raise Skip("encode_failed", f"{policy.image_format} of {img.width}x{img.height}: "
                   f"{type(exc).__name__}: {exc}") from exc
    return buffer.getvalue()


def clean_caption(value: Any, first_line: bool = False) -> str:
    """Raw caption (str or bytes) -> one line of text; raises `Skip` when there is nothing usable.

    Runs of whitespace (newlines, tabs) become one space; no other change, so captions stay as written.
    `first_line`: keep only the first non-blank line (a sidecar holding a caption, then translations or more
    captions: `genlip optimize --caption-lines first`).
    """
    if value is None:
        raise Skip("missing_caption", "no caption")
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        try:
            value = raw.decode("utf-8-sig")  # tolerate a byte-order mark from Windows editors
        except UnicodeDecodeError as exc:
            raise Skip("caption_not_utf8", f"byte {exc.start}: {raw[exc.start:exc.start + 4]!r}") from exc
    if not isinstance(value, str):
        value = str(value)
    if first_line:
        value = next((line for line in value.splitlines() if line.strip()), value)
    text = _WHITESPACE.sub(" ", value).strip()
    if not text:
        raise Skip("empty_caption", f"caption {value[:40]!r} is empty or whitespace")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates (JSON "\ud800"): storable nowhere
        raise Skip("caption_not_utf8", f"character {exc.start}: lone surrogate {text[exc.start]!r}") from exc
    return text


def cap_caption(text: str, max_chars: int | None) -> tuple[str, bool]:
    """Cut a cleaned caption to `max_chars` characters (at a word boundary when one is near); (text, was cut)."""
    if max_chars is None or len(text) <= max_chars:
        return text, False
    cut = text[:max_chars]
    space = cut.rfind(" ")
    if space >= max_chars * 0.9:  # do not leave half a word, unless that would lose much
        cut = cut[:space]
    return cut.rstrip(), True


def clean_label(value: Any, class_ids: dict[str, int] | None) -> int:
    """Raw label -> class id (-1 when absent); raises `Skip` for a label that cannot be mapped."""
    if isinstance(value, (bytes, bytearray)):  # decoded first, so an empty .cls sidecar counts as absent too
        value = bytes(value).decode("utf-8", errors="replace")
    if value is None or (isinstance(value, str) and not value.strip()):
        return -1
    if isinstance(value, bool):
        raise Skip("bad_label", f"boolean label {value!r}")
    if isinstance(value, (int, np.integer)):
        return _in_int64(int(value))
    if isinstance(value, float) and value.is_integer():
        return _in_int64(int(value))
    text = str(value).strip()
    if class_ids is not None and text in class_ids:
        return class_ids[text]
    if re.fullmatch(r"[+-]?\d+", text):
        return _in_int64(int(text))
    known = "" if class_ids is None else f" (not among the {len(class_ids)} names in --classes)"
    raise Skip("bad_label", f"label {text[:40]!r} is not an integer{known}")


def _in_int64(label: int) -> int:
    """Labels are stored as int64: a larger one would stop the shard writer, so it is a bad sample instead."""
    if not INT64[0] <= label <= INT64[1]:
        raise Skip("bad_label", f"label {str(label)[:24]} is outside the int64 range")
    return label
