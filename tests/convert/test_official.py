"""The authors' GenLIP checkpoints: every fixture converts, and our forward reproduces theirs (fp32, CPU).

Fixtures (tests/fixtures/official, produced by running the authors' `GenLIPModel` at db2c226; README there):
`tiny` (text width = width, as So/16) and `tiny_textproj` (text width 32 < width 64: `in_proj` / `proj`, as L/16
and g/16). Their input is ONE packed row of two samples `[image][prompt][caption][<|im_end|>, "\\n"]`.

What is compared, per fixture:
- packed row through our packed path (`forward_packed` / `loss_packed`, segment ids = their sample ids): the
  final-norm hidden states at all 51 positions (`final_norm_out`), the LM-head input after the text bottleneck
  (`hidden_states`), the logits at all positions, and the loss (their mean CE over the caption, <|im_end|>, "\\n"
  targets) -- each to <= 1e-5; and the rotary cos/sin tables;
- each sample alone through our fixed-resolution path (`forward_features` on the image at its own grid and the
  sample's text): the same slices of hidden states and logits, and the two samples' summed loss over the same
  targets.
For So/16, L/16 and g/16 the full-size key lists map name for name and shape for shape onto our presets on the
meta device, and parameter counts are equal.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from toy_tokenizers import FIXTURES, write_toy_tokenizer

from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.cli import main
from genlip_lit.commands.import_checkpoint import import_checkpoint
from genlip_lit.convert.common import load_state, read_json
from genlip_lit.convert.official import config_from_official, convert_official_state
from genlip_lit.data.batch import PATCH, TEXT
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP, GenLIPConfig

OFFICIAL = os.path.join(FIXTURES, "official")
TOL = 1e-5
RECIPE = ("drop_path_schedule", "weight_decay_scope", "attn_init")  # training recipe, not architecture


def _model(variant: str) -> tuple[GenLIP, dict]:
    d = os.path.join(OFFICIAL, variant)
    cfg = config_from_official(read_json(os.path.join(d, "config.json")))
    model = GenLIP(cfg)
    model.load_state_dict(convert_official_state(load_state(d)[0], cfg), strict=True)
    model.eval().set_attn_impl("mask")
    return model, load_file(os.path.join(d, "io.safetensors"))


def _close(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    diff = (ours.double() - theirs.double()).abs().max().item()
    assert diff <= TOL, diff
    return diff


@pytest.mark.parametrize("variant", ["tiny", "tiny_textproj"])
def test_packed_row_reproduces_the_official_forward(variant):
    model, io = _model(variant)
    assert model.cfg.has_text_bottleneck == (variant == "tiny_textproj")
    image = io["image_mask"][0]
    kinds = torch.where(image, PATCH, TEXT)[None]
    labels = io["labels"]
    with torch.no_grad():
        out = model.forward_packed(io["pixel_values"], kinds, io["input_ids"], io["position_ids"].permute(1, 0, 2),
                                   io["sample_ids"] + 1)
        _close(out.hidden, io["final_norm_out"])
        _close(model.head_input(out.hidden), io["hidden_states"])
        _close(model.logits(out.hidden), io["logits"])
        loss = model.loss_packed(io["pixel_values"], kinds, io["input_ids"], io["position_ids"].permute(1, 0, 2),
                                 io["sample_ids"] + 1, labels != -100)
        _close(loss.loss, io["loss"])
        assert int(loss.num_tokens) == int((labels[:, 1:] != -100).sum())
        cos, sin = model.rope(io["position_ids_used"][:, 0])
        _close(cos, io["rope_cos"][0])
        _close(sin, io["rope_sin"][0])


@pytest.mark.parametrize("variant", ["tiny", "tiny_textproj"])
def test_each_sample_alone_reproduces_its_slice(variant):
    """Our fixed-resolution path (one image, its text) on each packed sample equals that sample's slice."""
    model, io = _model(variant)
    segments = json.load(open(os.path.join(OFFICIAL, variant, "io.json")))["layout"]["segments_half_open"]
    total_ce, total_n, start = 0.0, 0, 0
    for s, seg in enumerate(segments):
        end = start + seg["sample_len"]
        n_img = seg["image"][1] - seg["image"][0]
        ids = io["input_ids"][:, start + n_img : end]
        mask = io["labels"][:, start + n_img : end] != -100
        with torch.no_grad():
            out = model.forward_features(io[f"images.{s}"][None], ids)
            _close(out.hidden, io["final_norm_out"][:, start:end])
            _close(model.text_logits(io[f"images.{s}"][None], ids), io["logits"][:, start + n_img : end])
            loss = model.loss(io[f"images.{s}"][None], ids, mask)
        total_ce += float(loss.loss) * int(loss.num_tokens)
        total_n += int(loss.num_tokens)
        start = end
    assert abs(total_ce / total_n - float(io["loss"])) <= TOL


# The released configs (genlip_{so16,l16,g16}_224.json) as the spec table gives them; widths, depths, FFN and
# text widths are cross-checked against the key lists' shapes below.
RELEASED = {
    "so16": dict(num_hidden_layers=27, hidden_size=1152, intermediate_size=3072, num_attention_heads=16,
                 text_embed_dim=1152, section=[12, 12, 12], drop_path_rate=0.1),
    "l16": dict(num_hidden_layers=24, hidden_size=1152, intermediate_size=2752, num_attention_heads=16,
                text_embed_dim=1024, section=[8, 12, 12], drop_path_rate=0.1),
    "g16": dict(num_hidden_layers=40, hidden_size=1536, intermediate_size=4096, num_attention_heads=16,
                text_embed_dim=1024, section=[16, 16, 16], drop_path_rate=0.2),
}


def released_config(name: str) -> dict:
    config = read_json(os.path.join(OFFICIAL, "tiny", "config.json"))
    sizes = dict(RELEASED[name])
    config["rope_scaling"] = {"type": "mrope", "mrope_section": sizes.pop("section")}
    return {**config, **sizes, "patch_size": 16, "vocab_size": 151936, "torch_dtype": "bfloat16"}


@pytest.mark.parametrize("name", ["so16", "l16", "g16"])
def test_released_presets_map_key_for_key(name):
    keys = json.load(open(os.path.join(OFFICIAL, f"keys_{name}.json")))
    cfg = config_from_official(released_config(name))
    preset = GenLIPConfig.from_name(name, vocab_size=151936)
    ours, want = dataclasses.asdict(cfg), dataclasses.asdict(preset)
    assert {k: v for k, v in ours.items() if k not in RECIPE} == {k: v for k, v in want.items() if k not in RECIPE}
    source = {k: torch.empty(shape, device="meta") for k, shape in keys["keys"].items()}
    converted = convert_official_state(source, preset)  # raises on any unmapped key or shape mismatch
    with torch.device("meta"):
        model = GenLIP(preset)
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape)
                                                                 for k, v in model.state_dict().items()}
    n_ours = sum(p.numel() for p in model.parameters())
    assert n_ours == keys["num_parameters_unique"] == sum(t.numel() for t in source.values())


def test_l16_section_acts_as_the_pure_pattern():
    """L/16's [8, 12, 12] at head dim 72: the authors' rule never reads section[0], so every frequency channel
    follows T, H, W, T, H, W, ... exactly as So/16's [12, 12, 12]."""
    from genlip_lit.models.rope import mrope_axis_map

    l16, so16 = GenLIPConfig.from_name("l16"), GenLIPConfig.from_name("so16")

    assert torch.equal(mrope_axis_map(72, l16.mrope_section), mrope_axis_map(72, so16.mrope_section))
    assert mrope_axis_map(72, l16.mrope_section).tolist() == [0, 1, 2] * 12


def _fixture_state() -> dict:
    return load_file(os.path.join(OFFICIAL, "tiny", "model.safetensors"))


def _cfg() -> GenLIPConfig:
    return config_from_official(read_json(os.path.join(OFFICIAL, "tiny", "config.json")))


@pytest.mark.parametrize("edit,message", [
    (lambda s: s.update({"visual.layers.0.extra.weight": torch.zeros(2)}), "unknown key 'visual.layers.0.extra"),
    (lambda s: s.pop("lm_head.weight"), "missing tensor 'lm_head.weight'"),
    (lambda s: s.update({"ln_post.weight": torch.zeros(63)}), "'ln_post.weight' has shape \\[63\\]"),
    (lambda s: s.update({"visual.layers.1.self_attn.q_proj.weight": torch.zeros(64, 64)}),
     "'visual.layers.1.self_attn.q_proj.weight' has shape \\[64, 64\\]"),
])
def test_unmappable_weights_name_the_key(edit, message):
    state = _fixture_state()
    edit(state)
    with pytest.raises(GenLIPUserError, match=message):
        convert_official_state(state, _cfg())


@pytest.mark.parametrize("change,message", [
    ({"use_llm_head": True}, "use_llm_head"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"qk_layernorm": True}, "unknown config key 'qk_layernorm'"),
    ({"hidden_act": "gelu"}, "hidden_act"),
])
def test_unsupported_options_are_refused_by_name(change, message):
    config = {**read_json(os.path.join(OFFICIAL, "tiny", "config.json")), **change}
    with pytest.raises(GenLIPUserError, match=message):
        config_from_official(config)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("import_official")
    toy = write_toy_tokenizer("official", str(tmp / "toy_tokenizer.json"))
    out = tmp / "imported"
    assert main(["import", os.path.join(OFFICIAL, "tiny_textproj"), "--output", str(out), "--tokenizer", toy]) == 0
    os.remove(toy)
    os.remove(out / "tokenizer.json")  # the checkpoint carries its tokenizer: neither file is needed any more
    return out / "genlip.ckpt"


def test_imported_checkpoint_captions_as_trained(imported):
    """`genlip import` output: loads with weights_only=True, rebuilds the module (no tokenizer file left),
    encodes the fixture's texts exactly as the authors' template did, and starts greedy captions where their
    logits point."""
    raw = torch.load(imported, map_location="cpu", weights_only=True)
    assert raw["genlip_module_class"] == "genlip_lit.modules.genlip.GenLIPModule"
    assert raw["datamodule_hyper_parameters"] == {"image_size": 224, "mean": [0.5] * 3, "std": [0.5] * 3}
    module, data = load_checkpoint(str(imported))
    io = load_file(os.path.join(OFFICIAL, "tiny_textproj", "io.safetensors"))
    enc = module.caption_encoder
    assert enc.template == "official" and enc.prompt == "Describe the image in detail."
    ids, mask = enc.encode("A red cube sits on a wooden table.")
    assert ids == io["input_ids"][0, 12:29].tolist()
    assert mask == (io["labels"][0, 12:29] != -100).tolist()
    assert enc.stop_id == 282  # <|im_end|> in the toy vocabulary
    model, _ = _model("tiny_textproj")
    px = io["images.0"][None]
    with torch.no_grad():
        torch.testing.assert_close(module.model.text_logits(px, torch.tensor([ids])),
                                   model.text_logits(px, torch.tensor([ids])), rtol=0, atol=0)
        first = module.model.generate(px, enc.prompt_ids(), 1, enc.stop_id).tokens[0, 0]
    assert int(first) == int(io["logits"][0, 17].argmax())  # the last prompt token predicts the caption's first
    assert isinstance(module.generate_captions(px, 4)[0], str)


def test_sharded_bf16_directories_import(tmp_path):
    """Two bf16 shards with an index (the authors' `save_model_weights` default) import to the bf16 values."""
    state = _fixture_state()
    names = sorted(state)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    src = tmp_path / "src"
    src.mkdir()
    for file, keys in shards.items():
        save_file({k: state[k].bfloat16() for k in keys}, str(src / file))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    (src / "config.json").write_text(open(os.path.join(OFFICIAL, "tiny", "config.json")).read())
    write_toy_tokenizer("official", str(src / "tokenizer.json"))
    (src / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 256, "width": 256},
                                                              "image_mean": [0.5] * 3, "image_std": [0.25] * 3}))
    assert main(["import", str(src), "--output", str(tmp_path / "out")]) == 0
    module, data = load_checkpoint(str(tmp_path / "out" / "genlip.ckpt"))
    assert data == {"image_size": 256, "mean": [0.5] * 3, "std": [0.25] * 3}
    converted = convert_official_state({k: v.bfloat16().float() for k, v in state.items()}, _cfg())
    for k, v in module.model.state_dict().items():
        if k in converted:
            assert torch.equal(v, converted[k]), k
    (src / "tokenizer.json").unlink()
    with pytest.raises(GenLIPUserError, match="no tokenizer file .*pass --tokenizer"):
        import_checkpoint(str(src), str(tmp_path / "out2"))
