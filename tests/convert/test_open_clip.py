"""open_clip's GenLIP (`NaFlexGenLip`): the fixture converts, and our model reproduces its forward (fp32, CPU).

The fixture (tests/fixtures/open_clip/tiny, produced by open_clip at 89fb801; README there) holds a batch of two
(image, caption) rows `[12 image slots][11 text slots]`: image B has 10 patches + 2 zero padding slots, text is
`[BOS] caption [EOS]` + pad; no attention/FFN biases; text bottleneck 32 < width 64; channels-last Linear
patch embedding. Their loss counts every valid text token INCLUDING BOS, which is predicted from the last image
slot -- for row B a padding slot, an output no captioner given BOS would ever compute.

What is compared:
- our converted model over THEIR row layout (their padding slots, positions and attention mask, fed through our
  patch embedding, token embedding, blocks, final norm, bottleneck and LM head): final-norm hidden states,
  `out_proj` outputs and logits at every slot, and their loss (BOS targets included), each to <= 1e-5;
- each sample alone through our own path (`forward_features` on the image at its grid and `[BOS] caption [EOS]`):
  the valid image and text slots of the same tensors, and our loss (targets caption + EOS, our template) against
  the cross-entropy of their logits over those same targets.
The full-size So/16 key list (aliases included) maps onto our configuration with equal parameter count.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from toy_tokenizers import FIXTURES, write_toy_tokenizer

from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.cli import main
from genlip_lit.commands.import_checkpoint import import_checkpoint
from genlip_lit.convert.common import load_state, read_json
from genlip_lit.convert.open_clip import config_from_open_clip, convert_open_clip_state
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP

OPEN_CLIP = os.path.join(FIXTURES, "open_clip")
TINY = os.path.join(OPEN_CLIP, "tiny")
TOL = 1e-5


def _model() -> tuple[GenLIP, dict]:
    cfg = config_from_open_clip(read_json(os.path.join(TINY, "config.json")))
    model = GenLIP(cfg)
    model.load_state_dict(convert_open_clip_state(load_state(TINY)[0], cfg), strict=True)
    model.eval().set_attn_impl("mask")
    return model, load_file(os.path.join(TINY, "io.safetensors"))


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    diff = (ours.double() - theirs.double()).abs().max().item()
    assert diff <= TOL, diff
    return diff


class ExplicitMask:
    """An attention layout that is just a given boolean mask [B, 1, S, S] (their prefix-LM with padding)."""

    def __init__(self, mask: torch.Tensor) -> None:
        self.mask = mask

    def dense_mask(self, n_q: int, n_k: int, device: torch.device | None = None) -> torch.Tensor:
        return self.mask


def test_their_row_layout_reproduces_every_output_and_the_loss():
    model, io = _model()
    b, n_img, flat = io["patches"].shape
    p = model.cfg.patch_size
    conv = model.patch_embed
    # their channels-last flat patches -> our (c, py, px) order, through our (converted) patch projection
    patches = io["patches"].reshape(b, n_img, p, p, 3).permute(0, 1, 4, 2, 3).reshape(b, n_img, flat)
    with torch.no_grad():
        img = F.linear(patches, conv.weight.flatten(1), conv.bias)
        _close(img, io["patch_embeds"])
        x = torch.cat([img, model.embed_tokens(io["text"])], dim=1)
        _close(x, io["trunk_input"])
        rope = model.rope(io["position_ids_used"])
        _close(rope[0], io["rope_cos"])
        layout = ExplicitMask(io["attn_mask"])
        for i, blk in enumerate(model.blocks):
            x, _ = blk(x, rope, layout)
            _close(x, io[f"layer_out.{i}"])
        hidden = model.norm(x)
        _close(hidden, io["final_norm_out"])
        _close(model.head_input(hidden), io["out_proj_out"])
        logits = model.logits(hidden)
        _close(logits, io["logits"])
    valid = io["text_valid"]
    predicting = logits[:, n_img - 1 : n_img - 1 + valid.shape[1]]  # text token j from slot n_img - 1 + j
    loss = F.cross_entropy(predicting[valid], io["text"][valid])
    _close(loss, io["loss"])


def test_each_sample_alone_through_our_path():
    model, io = _model()
    n_img = io["patches"].shape[1]
    ce, count = 0.0, 0
    ce_theirs = 0.0
    for s in range(2):
        n_valid, text = int(io["patch_valid"][s].sum()), io["text"][s][io["text_valid"][s]]
        n_text = len(text)
        mask = torch.ones(1, n_text, dtype=torch.bool)
        mask[0, 0] = False  # our template: BOS is given, caption + EOS are the targets
        with torch.no_grad():
            out = model.forward_features(io[f"images.{s}"][None], text[None])
            _close(out.hidden[0, :n_valid], io["final_norm_out"][s, :n_valid])
            _close(out.hidden[0, n_valid:], io["final_norm_out"][s, n_img : n_img + n_text])
            _close(model.logits(out.hidden)[0, n_valid:], io["logits"][s, n_img : n_img + n_text])
            loss = model.loss(io[f"images.{s}"][None], text[None], mask)
        ce += float(loss.loss) * int(loss.num_tokens)
        count += int(loss.num_tokens)
        theirs = io["logits"][s, n_img : n_img + n_text - 1]  # slot n_img + j - 1 predicts token j >= 1
        ce_theirs += float(F.cross_entropy(theirs, text[1:], reduction="sum"))
    assert count == int(io["text_valid"].sum()) - 2
    assert abs(ce / count - ce_theirs / count) <= TOL


def so16_config() -> dict:
    """naflexgenlip_so16.json as open_clip's README gives it (the tiny fixture's config at full size)."""
    config = read_json(os.path.join(TINY, "config.json"))
    config["embed_dim"] = 1152
    config["genlip_cfg"] = {**config["genlip_cfg"], "width": 1152, "depth": 27, "num_heads": 16,
                            "intermediate_size": 3072, "text_embed_dim": 1024, "mrope_section": [12, 12, 12]}
    config["vision_cfg"] = {**config["vision_cfg"], "patch_size": 16}
    config["text_cfg"] = {**config["text_cfg"], "vocab_size": 100280, "pad_id": 100278, "bos_id": 100279,
                          "eos_id": 100277}
    return config


def test_so16_key_list_maps_with_equal_parameter_count():
    keys = json.load(open(os.path.join(OPEN_CLIP, "keys_so16.json")))
    cfg = config_from_open_clip(so16_config())
    assert not (cfg.qkv_bias or cfg.out_bias or cfg.ffn_bias) and cfg.text_width == 1024
    source = {k: torch.empty(shape, device="meta") for k, shape in keys["keys"].items()}
    assert len(source) == keys["num_state_dict_keys"] == 716
    converted = convert_open_clip_state(source, cfg)
    with torch.device("meta"):
        model = GenLIP(cfg)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape)
                                                                 for k, v in model.state_dict().items()}
    assert sum(p.numel() for p in model.parameters()) == keys["num_parameters_unique"]


@pytest.mark.parametrize("option", ["qk_norm", "input_norm", "pre_norm"])
def test_options_we_lack_are_refused(option):
    config = read_json(os.path.join(TINY, "config.json"))
    config["genlip_cfg"][option] = True
    with pytest.raises(GenLIPUserError, match=f"genlip_cfg.{option}"):
        config_from_open_clip(config)


def test_bias_options_map_and_mismatches_name_the_key():
    config = read_json(os.path.join(TINY, "config.json"))
    config["genlip_cfg"]["attention_bias"] = True
    cfg = config_from_open_clip(config)
    assert cfg.qkv_bias and cfg.out_bias and not cfg.ffn_bias
    with pytest.raises(GenLIPUserError, match="missing tensor 'trunk.layers.0.self_attn.q_proj.bias'"):
        convert_open_clip_state(load_state(TINY)[0], cfg)
    config = read_json(os.path.join(TINY, "config.json"))
    with pytest.raises(GenLIPUserError, match="visual.proj"):
        config_from_open_clip({**config, "embed_dim": 32})
    state = load_state(TINY)[0]
    state["visual.trunk.ln_post.weight"] = state["trunk.ln_post.weight"] + 1
    with pytest.raises(GenLIPUserError, match="'visual.trunk.ln_post.weight' should equal"):
        convert_open_clip_state(state, config_from_open_clip(config))


def test_import_with_a_given_tokenizer(tmp_path):
    toy = write_toy_tokenizer("open_clip", str(tmp_path / "cl100k_toy.json"))
    assert main(["import", TINY, "--output", str(tmp_path / "out"), "--tokenizer", toy]) == 0
    module, data = load_checkpoint(str(tmp_path / "out" / "genlip.ckpt"))
    assert data["image_size"] == 256 and data["mean"][0] == pytest.approx(0.48145466)
    io = load_file(os.path.join(TINY, "io.safetensors"))
    enc = module.caption_encoder
    ids, mask = enc.encode("A red cube sits on a wooden table.")
    assert ids == io["text"][0][io["text_valid"][0]].tolist()  # [BOS 299] caption [EOS 297]
    assert enc.stop_id == 297 and module.tokenizer.pad_id == 298 and module.model.cfg.vocab_size == 300
    model, _ = _model()
    px = io["images.0"][None]
    with torch.no_grad():
        torch.testing.assert_close(module.encode_patches(px), model.encode_image(px), rtol=0, atol=0)
    with pytest.raises(GenLIPUserError, match="cl100k_base.*pass --tokenizer"):
        import_checkpoint(TINY, str(tmp_path / "no_tok"))


def test_training_checkpoints_load_weights_only(tmp_path):
    state = load_file(os.path.join(TINY, "model.safetensors"))
    src = tmp_path / "run"
    src.mkdir()
    (src / "config.json").write_text(open(os.path.join(TINY, "config.json")).read())
    shifted = {k: v + 1 for k, v in state.items()}
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()},
                "state_dict_ema": shifted}, src / "epoch_3.pt")
    toy = write_toy_tokenizer("open_clip", str(tmp_path / "tok.json"))
    plain = import_checkpoint(str(src / "epoch_3.pt"), str(tmp_path / "a"), tokenizer=toy)
    ema = import_checkpoint(str(src / "epoch_3.pt"), str(tmp_path / "b"), tokenizer=toy, ema=True)
    a, b = (torch.load(r.path, weights_only=True)["state_dict"] for r in (plain, ema))
    assert torch.equal(a["model.norm.weight"], state["trunk.ln_post.weight"])
    assert torch.equal(b["model.norm.weight"], state["trunk.ln_post.weight"] + 1)
    torch.save({"state_dict": state, "optimizer": _Unsafe()}, src / "epoch_3.pt")
    with pytest.raises(GenLIPUserError, match="weights_only=True"):
        import_checkpoint(str(src / "epoch_3.pt"), str(tmp_path / "c"), tokenizer=toy)


class _Unsafe:
    """Any pickled object that is not plain data: torch.load(weights_only=True) refuses it."""
