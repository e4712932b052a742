"""Image files a user names (files, folders, globs) -> model-sized pixels, a batch at a time: what `genlip caption`
reads.

    files = expand_inputs(["photos/", "scans/*.png", "one.jpg"], recursive=False)
    for batch in preprocessed_batches(files, Preprocessing(224).transform(), batch_size=32):
        batch.paths, batch.pixels   # the images that decoded: uint8 [B, 3, S, S], in input order
        batch.skipped               # (path, reason) of the files that did not, in input order

Memory stays bounded by the batch, never by the inputs: each file is read (at most `max_bytes`, refusing FIFOs and
devices: `safe_read.py`), its size judged from the header (at most `max_pixels`: decompression bombs never
decode), decoded, turned upright (EXIF orientation), made RGB (transparency composited on white, as `genlip
optimize` stores training images) and resized and cropped to the model's input right away; the full-resolution
picture is dropped before the next file is opened. A batch holds `batch_size` model-sized uint8 images.

A file that cannot be read or decoded is not an error of the run: it comes back in `skipped` with a short reason
and the rest go on. A path that names nothing (a typo, a glob without a match, a folder without images) is a
user error raised before anything is read.
"""

from __future__ import annotations

import glob
import io
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.cleaning import DEFAULT_MAX_PIXELS, to_rgb
from genlip_lit.ingest.safe_read import DEFAULT_MAX_BYTES, ReadLimits, Refused, read_file

# What a folder contributes (matched case-insensitively); a file named explicitly is tried whatever its name.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
_GLOB_CHARS = set("*?[")


class UnreadableImage(Exception):
    """A file that does not give an image; the message is the short reason shown to the user."""


@dataclass
class ImageBatch:
    """Up to `batch_size` images that decoded, and the files skipped since the previous batch."""

    paths: list[str] = field(default_factory=list)
    pixels: torch.Tensor | None = None  # uint8 [len(paths), 3, S, S]; None when no image decoded
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)


def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not os.path.basename(name).startswith(".")


def _folder_images(folder: str, recursive: bool) -> tuple[list[str], int, bool]:
    """(image files sorted by path, other files ignored, whether it has subfolders) of a folder."""
    found, ignored, has_subfolders = [], 0, False
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        if dirs and not recursive:
            has_subfolders = True
            dirs[:] = []
        for name in sorted(files):
            if _is_image_name(name):
                found.append(os.path.join(root, name))
            elif not name.startswith("."):
                ignored += 1
    return sorted(found), ignored, has_subfolders


def expand_inputs(inputs: Sequence[str], recursive: bool = False) -> tuple[list[str], int]:
    """(image files in input order, files ignored in folders for their extension) of files, folders and globs.

    - a file: itself, whatever its name (it may still fail to decode: then it is skipped when read);
    - a folder: its files with an image extension (`IMAGE_EXTENSIONS`), sorted by path; with `recursive`, those
      of its subfolders too (hidden files and folders are left out);
    - a glob (`'photos/*.jpg'`, `'photos/**/*.png'`, quoted so the shell leaves it): its matches, sorted; a
      matching folder counts as a folder.
    A file named twice is read once, at its first place. A path that names nothing raises GenLIPUserError.
    """
    files: list[str] = []
    ignored = 0
    for raw in inputs:
        path = os.path.expanduser(raw)
        if os.path.isdir(path):
            found, skipped, has_subfolders = _folder_images(path, recursive)
            if not found:
                hint = " (it has subfolders: --recursive reads them)" if has_subfolders else ""
                raise GenLIPUserError(f"folder {raw} holds no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
            files += found
            ignored += skipped
        elif os.path.lexists(path):
            files.append(path)
        elif _GLOB_CHARS & set(path):
            matches = sorted(glob.glob(path, recursive=True))
            if not matches:
                raise GenLIPUserError(f"no file matches {raw}")
            for match in matches:
                if os.path.isdir(match):
                    found, skipped, _ = _folder_images(match, recursive)
                    files += found
                    ignored += skipped
                else:
                    files.append(match)
        else:
            raise GenLIPUserError(f"image file not found: {raw}")
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.realpath(f)
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique, ignored


def load_image(path: str, transform: Any, max_bytes: int = DEFAULT_MAX_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """One file -> `transform.to_uint8` of it (uint8 [3, S, S]); raises UnreadableImage with a short reason.

    The decoded picture lives only inside this call: what returns is model-sized.
    """
    try:
        data = read_file(path, (), ReadLimits(max_bytes=max_bytes, allow_outside=True))
    except Refused as err:
        raise UnreadableImage(err.detail.replace(path, "the file", 1)) from None
    except OSError as err:
        raise UnreadableImage(f"cannot read it ({err.strerror or err})") from None
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # truncated or odd files warn before they fail; the reasons say it
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise UnreadableImage(f"not an image ({len(data):,} bytes, no image format recognised)") from None
        except Image.DecompressionBombError as err:
            raise UnreadableImage(f"too many pixels ({err})") from None
        except Exception as err:  # noqa: BLE001 - broken headers raise SyntaxError, OSError, ValueError, ...
            raise UnreadableImage(f"corrupt image ({type(err).__name__}: {err})") from None
        width, height = img.size
        if width * height > max_pixels:
            raise UnreadableImage(f"too many pixels ({width}x{height} is over the limit of {max_pixels:,}; "
                                  "--max-pixels raises it)")
        del data
        try:
            img.load()
            img = to_rgb(ImageOps.exif_transpose(img))
        except Exception as err:  # noqa: BLE001 - truncated data, bad chunks, decoder errors
            raise UnreadableImage(f"corrupt image ({type(err).__name__}: {err})") from None
    return transform.to_uint8(img)


def preprocessed_batches(paths: Iterable[str], transform: Any, batch_size: int = 32,
                         max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS
                         ) -> Iterator[ImageBatch]:
    """`ImageBatch`es over `paths` in order: each holds up to `batch_size` decoded images (model-sized) and the
    files skipped on the way; a last batch may hold only skipped files. Files are read lazily, one at a time."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch = ImageBatch()
    pictures: list[torch.Tensor] = []
    for path in paths:
        try:
            pictures.append(load_image(path, transform, max_bytes, max_pixels))
            batch.paths.append(path)
        except UnreadableImage as err:
            batch.skipped.append((path, str(err)))
        if len(pictures) == batch_size:
            batch.pixels = torch.stack(pictures)
            yield batch
            batch, pictures = ImageBatch(), []
    if pictures or batch.skipped:
        batch.pixels = torch.stack(pictures) if pictures else None
        yield batch
