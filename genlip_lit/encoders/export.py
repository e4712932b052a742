"""The trained vision encoder out of a Lightning checkpoint, in a portable form, and its loader.

    genlip export --ckpt runs/quickstart/version_0/checkpoints/last.ckpt --output encoders/quickstart  (commands/export.py)
    python -c "import genlip_lit; enc = genlip_lit.load_vision_encoder('encoders/quickstart'); print(enc)"

The export is the image tower only (patch embedding, registers, blocks, final norm: no token embedding, no LM
head, no text decoder or text tower) as `model.safetensors`, and `config.json` with the architecture and the
preprocessing the encoder was trained with (patch size, image size, mean/std). `load_vision_encoder` rebuilds it
as a plain torch module mapping normalized images [B, 3, H, W] (any H, W divisible by the patch size: M-RoPE
places the grid) to the final-norm patch features [B, H/p * W/p, width] an MLLM consumes; no Lightning needed.
GenLIP, the encoder-decoder captioner and the contrastive baselines (GenLIP tower) export the same way.
Beside them: `timm/` (the same encoder as a timm NaFlexVit, encoders/timm.py; left out, with the reason, for the
ablations timm cannot express exactly) and a model card, `README.md` (model_card.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from genlip_lit.checkpoints.integrity import first_nonfinite
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.arch_checks import check_architecture
from genlip_lit.models.config import GenLIPConfig
from genlip_lit.models.transformer import GenLIP, image_tower
from genlip_lit.storage.paths import write_json

log = logging.getLogger(__name__)

FORMAT = "genlip_vision_encoder"
FORMAT_VERSION = 1
# implementation switches that must not travel with an exported encoder
RUNTIME_FIELDS = {"loss_chunk_tokens": 0, "grad_checkpointing": False, "compile_blocks": False, "drop_path": 0.0}


class VisionEncoder(nn.Module):
    """A GenLIP image tower: normalized pixels -> final-norm patch features (registers dropped)."""

    def __init__(self, config: GenLIPConfig, preprocessing: dict[str, Any]) -> None:
        super().__init__()
        self.config = config
        self.preprocessing = dict(preprocessing)
        self.tower = image_tower(_tower_config(config))

    def forward(self, pixel_values: Tensor) -> Tensor:
        p = self.config.patch_size
        if pixel_values.dim() != 4 or pixel_values.shape[-2] % p or pixel_values.shape[-1] % p:
            raise ValueError(f"expected [B, 3, H, W] with H and W divisible by the patch size {p}, "
                             f"got {tuple(pixel_values.shape)}")
        return self.tower.forward_features(pixel_values).hidden[:, self.config.num_registers :]

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """Patch grid (rows, columns) of an image of this size: features come in raster order over it."""
        return height // self.config.patch_size, width // self.config.patch_size


def vision_tower_of(module: Any) -> GenLIP:
    """The image tower inside a trained genlip module, whatever its objective (the module's own answer)."""
    tower = getattr(module, "vision_tower", None)
    if not callable(tower):
        raise GenLIPUserError(f"cannot export the vision encoder of {type(module).__name__}")
    return tower()


def export_vision_encoder(ckpt: str, output: str, loaded: tuple[Any, dict[str, Any]] | None = None) -> str:
    """Write DIR/model.safetensors and DIR/config.json; returns the directory. `loaded`: what
    `load_checkpoint(ckpt)` returned, when the caller loaded it already."""
    from safetensors.torch import save_file

    from genlip_lit.checkpoints.loading import load_checkpoint

    module, data_hparams = loaded if loaded is not None else load_checkpoint(ckpt)
    tower = vision_tower_of(module)
    config = dataclasses.replace(tower.cfg, **RUNTIME_FIELDS)
    reference = image_tower(config)  # exactly the parameters the loader will expect
    state = {k: v.detach().contiguous() for k, v in tower.state_dict().items() if k in reference.state_dict()}
    missing = sorted(set(reference.state_dict()) - set(state))
    if missing:
        raise GenLIPUserError(f"{ckpt}: the image tower lacks {missing[:5]}")
    from genlip_lit.data.transforms import Preprocessing

    preprocessing = {
        "patch_size": config.patch_size,
        **Preprocessing.from_hparams(data_hparams).as_dict(),
        "resolution": "fixed" if config.pos_embed == "learned" else "any multiple of patch_size (M-RoPE)",
        "max_grid": config.max_grid if config.pos_embed == "learned" else None,
    }
    os.makedirs(output, exist_ok=True)
    save_file(state, os.path.join(output, "model.safetensors"))
    description = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()},
        "preprocessing": preprocessing,
        "features": "final-norm patch features in raster order, registers dropped: [B, rows*cols, width]",
        "source": {"checkpoint": ckpt if "://" in str(ckpt) else os.path.abspath(ckpt), "module": type(module).__name__,
                   "objective": module.objective_name},
    }
    # checked by load_vision_encoder: flipped bytes in the weights, or an edited architecture, are refused
    description["sha256"] = {"model.safetensors": file_sha256(os.path.join(output, "model.safetensors")),
                             "architecture": architecture_sha256(description["architecture"])}
    from genlip_lit.encoders.model_card import write_model_card
    from genlip_lit.encoders.timm import timm_incompatibility, write_timm_form

    timm_note = timm_incompatibility(config)
    description["timm"] = {"directory": "timm", "note": "timm.create_model('local-dir:DIR/timm', pretrained=True)"
                           } if timm_note is None else {"directory": None, "note": f"not expressible: {timm_note}"}
    write_json(os.path.join(output, "config.json"), description, indent=1)
    if timm_note is None:
        write_timm_form(os.path.join(output, "timm"), state, config, preprocessing)
    write_model_card(output, description, sum(t.numel() for t in state.values()), ckpt, timm_note)
    return output


MAX_CONFIG_BYTES = 1 << 20  # a config.json is a few KB; anything this large is not one
MAX_HEADER_BYTES = 100 << 20  # safetensors' own limit on its JSON header
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "I16": 2,
                "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def architecture_sha256(architecture: dict[str, Any]) -> str:
    """Digest of the architecture as config.json stores it (canonical JSON), binding it to the weights."""
    return hashlib.sha256(json.dumps(architecture, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header alone (nothing else is read or allocated)."""
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        n = int.from_bytes(prefix, "little") if len(prefix) == 8 else -1
        if not 0 < n <= min(MAX_HEADER_BYTES, size - 8):
            raise GenLIPUserError(f"{path} is not a safetensors file (bad header length)")
        try:
            header = json.loads(fh.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GenLIPUserError(f"{path} is not a safetensors file (header: {err})") from None
    if not isinstance(header, dict):
        raise GenLIPUserError(f"{path} is not a safetensors file (header is not a JSON object)")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(entry, dict) and entry.get("dtype") in _DTYPE_BYTES and isinstance(entry.get("shape"), list)
        shape = entry.get("shape") if ok else None
        offsets = entry.get("data_offsets") if ok else None
        if not (ok and all(isinstance(d, int) and d >= 0 for d in shape) and isinstance(offsets, list)
                and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= size - 8 - n
                and offsets[1] - offsets[0] == math.prod(shape) * _DTYPE_BYTES[entry["dtype"]]):
            raise GenLIPUserError(f"{path}: tensor {name!r} has an invalid header entry")
        shapes[name] = tuple(shape)
    return shapes


def _buildable_config(arch: dict[str, Any], config_path: str) -> GenLIPConfig:
    """The GenLIPConfig of an export, checked field by field; runtime switches reset (they change no output)."""
    check_architecture(arch, f"{config_path}: architecture")
    try:
        return GenLIPConfig(**{**arch, **RUNTIME_FIELDS})
    except (TypeError, GenLIPUserError) as err:
        raise GenLIPUserError(f"{config_path}: incompatible architecture ({err})") from None


def _tower_config(config: GenLIPConfig) -> GenLIPConfig:
    # the tower drops the text parts; sized 1, a tampered vocab_size or max_text_len allocates nothing
    return dataclasses.replace(config, vocab_size=1, max_text_len=1)


def _check_against_weights(config: GenLIPConfig, weights_path: str, config_path: str) -> None:
    """The weights file's tensor names and shapes (header only) must be exactly the described tower's,
    checked on the meta device: a config declaring a huge width or depth allocates nothing."""
    stored = safetensors_shapes(weights_path)
    blocks = {int(k.split(".")[1]) for k in stored if k.startswith("blocks.") and k.split(".")[1].isdigit()}
    if config.depth != len(blocks):
        raise GenLIPUserError(f"{weights_path} does not match {config_path}: {len(blocks)} blocks stored, "
                              f"depth {config.depth} described")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in image_tower(_tower_config(config)).state_dict().items()}
    for name in sorted(set(expected) | set(stored)):
        if expected.get(name) != stored.get(name):
            raise GenLIPUserError(
                f"{weights_path} does not match {config_path}: {name} is {list(stored.get(name, ())) or 'absent'} in "
                f"the file, {list(expected.get(name, ())) or 'absent'} by the config"
            )


def load_vision_encoder(path: str, device: str | torch.device = "cpu") -> VisionEncoder:
    """The exported encoder in eval mode; a wrong, incomplete or edited directory raises an error naming it.

    Checked before any weight is allocated: config.json's fields (types, positive sizes and eps, known modes),
    the weights file's tensor shapes against them (from its header), and the sha256 of the weights file and of
    the architecture that `export_vision_encoder` recorded; after loading, that every weight is finite."""
    from safetensors.torch import load_file

    config_path, weights_path = os.path.join(path, "config.json"), os.path.join(path, "model.safetensors")
    for needed in (config_path, weights_path):
        if not os.path.isfile(needed):
            raise GenLIPUserError(f"{path} is not an exported genlip vision encoder: {os.path.basename(needed)} missing")
    if os.path.getsize(config_path) > MAX_CONFIG_BYTES:
        raise GenLIPUserError(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes: not an export config")
    with open(config_path, "rb") as f:
        try:
            description = json.loads(f.read())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise GenLIPUserError(f"{config_path} is not valid JSON ({err})") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        found = description.get("format") if isinstance(description, dict) else type(description).__name__
        raise GenLIPUserError(f"{config_path} describes {found!r}, not a {FORMAT}")
    version = description.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise GenLIPUserError(f"{config_path} has format version {version!r}; this genlip_lit reads up to "
                              f"{FORMAT_VERSION}")
    architecture = description.get("architecture", {})
    if not isinstance(architecture, dict):
        raise GenLIPUserError(f"{config_path}: architecture must be a JSON object")
    fields = {f.name for f in dataclasses.fields(GenLIPConfig)}
    config = _buildable_config({k: v for k, v in architecture.items() if k in fields}, config_path)
    _check_against_weights(config, weights_path, config_path)
    digests = description.get("sha256")
    if isinstance(digests, dict):
        if digests.get("architecture") != architecture_sha256(architecture):
            raise GenLIPUserError(f"{config_path}: the architecture does not match the one exported (edited after "
                                  "export? attn_mode, norm_eps and the like change the features silently)")
        if digests.get("model.safetensors") != file_sha256(weights_path):
            raise GenLIPUserError(f"{weights_path} does not match the sha256 recorded in {config_path} (corrupted "
                                  "or replaced after export)")
    else:
        log.warning("%s records no sha256 (exported before genlip_lit checked them): integrity not verified",
                    config_path)
    preprocessing = description.get("preprocessing", {})
    encoder = VisionEncoder(config, preprocessing if isinstance(preprocessing, dict) else {})
    try:
        encoder.tower.load_state_dict(load_file(weights_path), strict=True)
    except RuntimeError as err:
        raise GenLIPUserError(f"{weights_path} does not match {config_path}: {str(err).splitlines()[0]}") from None
    bad = first_nonfinite(encoder.tower.state_dict())
    if bad is not None:
        raise GenLIPUserError(f"{weights_path}: weight {bad!r} holds NaN or inf (exported from a diverged run?)")
    return encoder.eval().to(device)
