"""Max abs differences between our forward and the fixtures of the authors' GenLIP and open_clip's (fp32, CPU).

    python benchmarks/parity_fixtures.py

The fixtures (tests/fixtures/, made by running each implementation's own code) hold their final-norm hidden
states, LM-head inputs, logits and loss; tests/convert/test_{official,open_clip}.py assert each difference is
<= 1e-5, this prints the measured values. Official rows run through our packed path (their packed two-sample
row); open_clip's through our blocks over their padded row layout (their positions and attention mask).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from genlip_lit.convert.common import load_state, read_json
from genlip_lit.convert.official import config_from_official, convert_official_state
from genlip_lit.convert.open_clip import config_from_open_clip, convert_open_clip_state
from genlip_lit.data.batch import PATCH, TEXT
from genlip_lit.models import GenLIP

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def _load(directory: str, to_config, convert) -> tuple[GenLIP, dict]:
    cfg = to_config(read_json(os.path.join(directory, "config.json")))
    model = GenLIP(cfg)
    model.load_state_dict(convert(load_state(directory)[0], cfg))
    model.eval().set_attn_impl("mask")
    return model, load_file(os.path.join(directory, "io.safetensors"))


@torch.no_grad()
def official(variant: str) -> tuple[float, float, float, float]:
    model, io = _load(os.path.join(FIXTURES, "official", variant), config_from_official, convert_official_state)
    kinds = torch.where(io["image_mask"], PATCH, TEXT)
    args = (io["pixel_values"], kinds, io["input_ids"], io["position_ids"].permute(1, 0, 2), io["sample_ids"] + 1)
    hidden = model.forward_packed(*args).hidden
    loss = model.loss_packed(*args, io["labels"] != -100).loss
    return (_diff(hidden, io["final_norm_out"]), _diff(model.head_input(hidden), io["hidden_states"]),
            _diff(model.logits(hidden), io["logits"]), _diff(loss, io["loss"]))


class _Mask:
    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def dense_mask(self, n_q: int, n_k: int, device: torch.device | None = None) -> torch.Tensor:
        return self.mask


@torch.no_grad()
def open_clip() -> tuple[float, float, float, float]:
    model, io = _load(os.path.join(FIXTURES, "open_clip", "tiny"), config_from_open_clip, convert_open_clip_state)
    b, n, flat = io["patches"].shape
    p = model.cfg.patch_size
    patches = io["patches"].reshape(b, n, p, p, 3).permute(0, 1, 4, 2, 3).reshape(b, n, flat)
    conv = model.patch_embed
    x = torch.cat([F.linear(patches, conv.weight.flatten(1), conv.bias), model.embed_tokens(io["text"])], 1)
    rope, layout = model.rope(io["position_ids_used"]), _Mask(io["attn_mask"])
    for blk in model.blocks:
        x, _ = blk(x, rope, layout)
    hidden = model.norm(x)
    logits = model.logits(hidden)
    valid = io["text_valid"]
    loss = F.cross_entropy(logits[:, n - 1 : n - 1 + valid.shape[1]][valid], io["text"][valid])
    return (_diff(hidden, io["final_norm_out"]), _diff(model.head_input(hidden), io["out_proj_out"]),
            _diff(logits, io["logits"]), _diff(loss, io["loss"]))


def main() -> None:
    rows = [("official tiny", *official("tiny")), ("official tiny_textproj", *official("tiny_textproj")),
            ("open_clip tiny", *open_clip())]
    print("| fixture | final-norm hidden | LM-head input | logits | loss |")
    print("|---|---|---|---|---|")
    for name, *diffs in rows:
        print(f"| {name} | " + " | ".join(f"{d:.1e}" for d in diffs) + " |")


if __name__ == "__main__":
    main()
