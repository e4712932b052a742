"""Reading checkpoint files safely and checking their weights: what every genlip load path goes through.

    python -m pytest tests/checkpoints/test_integrity.py -q

- `read_checkpoint`: `torch.load(weights_only=True)`, so a file can hold tensors and plain data but no object
  whose unpickling runs code; a refused or unreadable file is one error line naming it.
- `weights_sha256`: a digest of a state dict (names, dtypes, shapes and bytes, in sorted name order). Modules
  store it in every checkpoint they write (`genlip_weights_sha256`); loaders recompute it, so flipped bytes in a
  file are caught instead of loading silently.
- `first_nonfinite`: the first tensor holding NaN or inf; such weights are refused (a diverged run's output).
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import is_remote, local_copy
from genlip_lit.storage.paths import isfile as remote_isfile

SHA_KEY = "genlip_weights_sha256"
# Set in memory by `verify_weights` so a second check of the same dict (the loader, then the module's
# on_load_checkpoint) is skipped. Only a `_Verified` object holding that very state dict counts: a file can carry
# this key too (with any plain value), and a file's say-so never switches a check off.
VERIFIED_KEY = "_genlip_weights_verified"


class _Verified:
    """In-memory proof that `state` (this object, not an equal one) passed `verify_weights`. Never in a file:
    `torch.load(weights_only=True)` cannot build it, and `read_checkpoint` drops the key whatever it holds."""

    __slots__ = ("state",)

    def __init__(self, state: Any) -> None:
        self.state = state


def _refusal(err: Exception) -> str | None:
    """What the file asked torch's weights-only unpickler to build (a global, a class), or None when the error
    is plain corruption. torch's message is many lines; this is the line that names it."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL [^\s]+|Unsupported class [^\s]+|Trying to [^\n]{0,160}", text)
    return found.group(0).rstrip(".") if found else None


def read_checkpoint(path: str, mmap: bool = False, allow: Iterable[str] = ()) -> dict[str, Any]:
    """The checkpoint dict of `path`, loaded with `weights_only=True` onto the CPU, its class names vetted.

    A file whose unpickling would build arbitrary Python objects (and so could run code) is refused; a
    truncated or foreign file is named; a class path anywhere in it that genlip_lit/checkpoints/registry.py does not know
    (nor `allow`, the classes the user's own config names) is refused before any caller can import it
    (`registry.vet_class_paths`). Each of these is one line, no traceback. A URL (s3://...) is read from a
    temporary local copy, through the same checks.
    """
    if is_remote(path):
        if not remote_isfile(path):
            raise GenLIPUserError(f"checkpoint not found: {path}")
        with local_copy(path) as local:
            try:
                return read_checkpoint(local, mmap=mmap, allow=allow)
            except GenLIPUserError as err:  # name the URL, not the temporary file
                raise GenLIPUserError(str(err).replace(local, path)) from None
    if not os.path.isfile(path):
        raise GenLIPUserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        asked = _refusal(err)
        if asked is not None:
            raise GenLIPUserError(
                f"{path}: refused to load: it holds Python objects beyond tensors and plain data ({asked}), whose "
                "unpickling could run code; genlip_lit reads checkpoints with torch.load(weights_only=True)"
            ) from None
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        detail = found.group(1).strip() if found else (str(err).strip().splitlines() or [""])[0][:200]
        raise GenLIPUserError(f"{path} is not a readable checkpoint ({detail})") from None
    except Exception as err:  # a truncated, corrupted or foreign file: say which one
        first = (str(err).strip().splitlines() or [""])[0].split(". ")[0][:200]
        raise GenLIPUserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {first})") from None
    if not isinstance(ckpt, dict):
        raise GenLIPUserError(f"{path} is not a checkpoint (it holds a {type(ckpt).__name__}, not a dict)")
    ckpt.pop(VERIFIED_KEY, None)  # verification state is never read from a file
    from genlip_lit.checkpoints.registry import vet_class_paths

    vet_class_paths(ckpt, path, allow)
    return ckpt


def weights_sha256(state_dict: Mapping[str, Any]) -> str:
    """Hex sha256 over every entry's name, dtype, shape and raw bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        value = state_dict[name]
        digest.update(name.encode("utf-8", "surrogatepass") + b"\0")
        if isinstance(value, torch.Tensor) and value.layout == torch.strided and not value.is_quantized:
            t = value.detach().cpu().contiguous()
            digest.update(f"{t.dtype}|{tuple(t.shape)}\0".encode())
            if t.numel():
                digest.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
        else:  # not a plain tensor (none in genlip modules): its type still counts
            digest.update(f"<{type(value).__name__}>\0".encode())
    return digest.hexdigest()


def first_nonfinite(state_dict: Mapping[str, Any]) -> str | None:
    """Name of the first floating-point tensor (in the dict's order) holding NaN or inf, else None."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex()):
            if not bool(torch.isfinite(value.detach()).all()):
                return name
    return None


def verify_weights(ckpt: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint whose weights are not a dict of tensors, differ from their stored digest, or hold
    NaN/inf. Checkpoints written before digests existed carry none and are only checked for finiteness.

    A dict this function passed before (same dict, same state_dict object) is not checked twice; whatever else
    the dict holds under VERIFIED_KEY (a file's `true`) is ignored and removed."""
    marker = ckpt.pop(VERIFIED_KEY, None)
    if isinstance(marker, _Verified) and marker.state is ckpt.get("state_dict"):
        ckpt[VERIFIED_KEY] = marker
        return
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise GenLIPUserError(f"{source} holds no state_dict")
    stored = ckpt.get(SHA_KEY)
    if stored is not None and stored != weights_sha256(state):
        raise GenLIPUserError(
            f"{source}: the weights do not match the sha256 stored in the checkpoint (the file was corrupted or "
            "edited after it was written)"
        )
    bad = first_nonfinite(state)
    if bad is not None:
        raise GenLIPUserError(
            f"{source}: weight {bad!r} holds NaN or inf (a diverged run); use an earlier checkpoint of the run"
        )
    ckpt[VERIFIED_KEY] = _Verified(state)

