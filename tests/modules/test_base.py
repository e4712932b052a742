"""What every objective shares (modules/base.py): optimizer groups from the model's own no-decay list, the
warmup + cosine schedule, one signature with init_from, and the encoder contract run on every registered objective
(checkpoints/registry.py) and on the toy ColourObjective of tests/helpers.py, as a user's plug-in."""

import math

import pytest
from helpers import REPO, ColourObjective, tiny_objective, write_checkpoint

from genlip_lit.checkpoints import registry
from genlip_lit.models import GenLIP, GenLIPConfig
from genlip_lit.modules.base import EncoderModule, param_groups, warmup_cosine


def test_no_decay_on_norms_biases_embeddings_gates_registers():
    model = GenLIP(GenLIPConfig.from_name("tiny", vocab_size=30, depth=1, num_registers=2))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert decayed | exempt == set(names.values()) and not decayed & exempt
    for name in exempt:
        assert any(k in name for k in ("norm", "bias", "tok_embed", "gate_proj", "registers", "ls", "gamma")), name
    assert "blocks.0.attn.gate_proj.weight" in exempt
    assert "tok_embed.weight" in exempt and "registers" in exempt
    assert "blocks.0.attn.q_proj.weight" in decayed and "lm_head.weight" in decayed
    assert "patch_embed.weight" in decayed


def test_warmup_then_cosine_to_min():
    total, warm, min_ratio = 100, 10, 0.01
    lrs = [warmup_cosine(s, total, warm, min_ratio) for s in range(total + 5)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))  # linear ramp
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # monotone decay
    mid = warmup_cosine(55, total, warm, min_ratio)
    assert mid == pytest.approx(min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[100] == pytest.approx(min_ratio) and lrs[104] == pytest.approx(min_ratio)


# ---------------------------------------------------------------------------------------------- every objective
# The choices inside one class that count as objectives of their own (the compare overlays' clip and siglip), the
# captioner's one decoder layer (seconds saved), and the overlays' names as test ids; any other registered class
# runs as it comes, under its class name.
CHOICES = {
    "GenLIPModule": {"genlip": {}},
    "ContrastiveModule": {"clip": {"loss": "clip"}, "siglip": {"loss": "siglip"}},
    "CaptionerModule": {"captioner": {"decoder_layers": 1}},
}
TINY = {"depth": 2, "width": 32, "num_heads": 2, "ffn_hidden": 64, "num_registers": 1}
SHARED_KEYS = {"lr", "min_lr", "weight_decay", "betas", "warmup_ratio", "warmup_steps", "init_from"}
# the parts of the contract a plug-in may leave to the base class (which raises NotImplementedError)
OPTIONAL = ("patch_word_scores", "text_match_scores", "attention_maps")


def _registered_objectives() -> dict[str, tuple[type, dict]]:
    """Every module class a checkpoint may name (the registry, aliases folded), plus the toy ColourObjective, which
    tests/helpers.py registers as a user's plug-in would be: test id -> (class, arguments). A class registered
    tomorrow runs through every test below with no edit here."""
    classes = {registry.resolve("module", path, "tests") for path in registry.known("module")} | {ColourObjective}
    cases = {}
    for cls in sorted(classes, key=registry.class_path):
        cases.update({name: (cls, choice) for name, choice in CHOICES.get(cls.__name__, {cls.__name__: {}}).items()})
    return cases


OBJECTIVES = _registered_objectives()


def _objective(name: str, seed: int = 0, **kw):
    cls, choice = OBJECTIVES[name]
    return tiny_objective(cls, TINY, seed=seed, max_text_len=24, **choice, **kw)


def test_every_registered_objective_is_under_contract() -> None:
    """The built-in objectives (each loss of the contrastive one) and the plug-in all run below."""
    assert {"genlip", "clip", "siglip", "captioner", "ColourObjective"} <= set(OBJECTIVES)
    assert {cls for cls, _ in OBJECTIVES.values()} >= {
        registry.resolve("module", path, "tests") for path in registry.known("module")}


def _old_no_decay_rule(model) -> set[str]:
    """The name-substring list every module used before models declared no_weight_decay() themselves."""
    keys = ("tok_embed", "pos_image", "pos_text", "registers", "gate_proj", "patch_embed.bias")
    return {n for n, p in model.named_parameters() if p.ndim < 2 or any(k in n for k in keys)}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_runs_the_whole_encoder_contract(name) -> None:
    """One check for all: features, pooling, tower, metadata, settings for the data, text where generative; the
    readouts genlip_lit's own objectives all have, where a plug-in has them."""
    import torch

    m = _objective(name).eval()
    assert isinstance(m, EncoderModule) and SHARED_KEYS <= set(m.hparams)  # one signature, the same YAML keys
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        patches = m.encode_patches(px)
        assert patches.shape == (2, 16, 32) and m.encode_pooled(px).shape == (2, 32)
        tower = m.vision_tower()
        assert sum(p.numel() for n, p in tower.named_parameters() if not n.startswith(("tok_embed", "lm_head"))) \
            == m.num_vision_params()
        assert isinstance(m.objective_name, str) and m.objective_name
        settings = m.data_settings()
        assert settings["caption_encoder"] is m.caption_encoder and settings["patch_size"] == 8
        assert settings["num_registers"] == 1
        implemented = {part for part in OPTIONAL if getattr(type(m), part) is not getattr(EncoderModule, part)}
        if type(m).__module__.startswith("genlip_lit."):
            assert implemented == set(OPTIONAL), name
        for part in set(OPTIONAL) - implemented:
            with pytest.raises(NotImplementedError):
                getattr(m, part)(px, None if part == "attention_maps" else ["red"])
        if "patch_word_scores" in implemented:
            assert m.patch_word_scores(px, ["red", "circle", "square"]).shape == (2, 16, 3)
        if "text_match_scores" in implemented:
            assert m.text_match_scores(px, ["a red circle", "a blue square"]).shape == (2, 2)
        if "attention_maps" in implemented:
            maps, num_prefix = m.attention_maps(px, None)
            assert len(maps) == 2 and num_prefix == 17 and maps[0].shape[-1] == 17
        if m.is_generative:
            assert len(m.generate_captions(px, max_new_tokens=3)) == 2
            assert m.score_captions(px, ["a red circle.", "a star."]).shape == (2,)
        else:
            with pytest.raises(NotImplementedError):
                m.generate_captions(px)
    # the model's own no-decay list gives exactly the groups of the old key list (behaviour unchanged)
    network = m.optimized_model()
    decay, no_decay = param_groups(network, 0.01, m.no_weight_decay())
    names = {id(p): n for n, p in network.named_parameters()}
    assert {names[id(p)] for p in no_decay["params"]} == _old_no_decay_rule(network)
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    # FSDP units: the model's blocks (the contrastive towers live on the module: DDP only)
    if network is not m:
        assert network.shard_units() and all(hasattr(u, "attn") for u in network.shard_units())
    # a fresh copy: same class and architecture, seeded random weights, the caller's RNG untouched
    rng = torch.get_rng_state()
    a, b = m.fresh_copy(seed=3), m.fresh_copy(seed=3)
    assert torch.equal(rng, torch.get_rng_state()) and type(a) is type(m)
    assert getattr(a, "tokenizer", None) is getattr(m, "tokenizer", None)  # the same vocabulary (an import's own)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.encode_patches(px), m.encode_patches(px))


def test_the_base_contract_says_what_is_missing() -> None:
    import torch

    from genlip_lit.errors import GenLIPUserError

    base = EncoderModule()
    px = torch.randn(1, 3, 8, 8)
    for call in (lambda: base.encode_patches(px), lambda: base.generate_captions(px),
                 lambda: base.text_match_scores(px, ["x"]), lambda: base.patch_word_scores(px, ["x"]),
                 lambda: base.attention_maps(px), lambda: base.num_vision_params()):
        with pytest.raises(NotImplementedError):
            call()
    with pytest.raises(GenLIPUserError, match="no GenLIP vision tower"):
        base.vision_tower()
    assert base.no_weight_decay() == set() and not base.is_generative
    assert base.data_settings() == {"caption_encoder": None, "patch_size": None, "num_registers": 0}


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_starts_from_init_from(name, tmp_path) -> None:
    """Weights only, with the same errors for every objective (stage 2 of CLIP/SigLIP/captioner too)."""
    import torch

    from genlip_lit.errors import GenLIPUserError

    source = _objective(name, seed=1)
    path = write_checkpoint(source, tmp_path / "stage1.ckpt", global_step=7)
    started = _objective(name, seed=2, init_from=str(path), lr=1e-4)
    assert started.init_source == str(path) and started.lr == 1e-4
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in started.state_dict().items())
    with pytest.raises(GenLIPUserError, match="does not fit this model.*shape differs"):
        cls, choice = OBJECTIVES[name]
        tiny_objective(cls, {**TINY, "width": 64}, max_text_len=24, init_from=str(path), **choice)


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_every_objective_reloads_and_exports_its_encoder(name, tmp_path) -> None:
    """A checkpoint of any objective rebuilds the same module (class from the registry, tokenizer, weights), and
    `genlip export` writes a vision encoder that computes its patch features."""
    import torch

    from genlip_lit.checkpoints.loading import load_checkpoint
    from genlip_lit.encoders.export import export_vision_encoder, load_vision_encoder

    m = _objective(name).eval()
    ckpt = write_checkpoint(m, tmp_path / "m.ckpt")
    loaded, _ = load_checkpoint(ckpt)
    assert type(loaded) is type(m) and loaded.hparams == m.hparams
    encoder = load_vision_encoder(export_vision_encoder(ckpt, str(tmp_path / "enc")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().encode_patches(x), m.encode_patches(x), rtol=0, atol=0)
        torch.testing.assert_close(encoder(x), m.encode_patches(x), rtol=0, atol=1e-6)
    assert sum(p.numel() for p in encoder.parameters()) == m.num_vision_params()


@pytest.mark.slow
def test_a_new_objective_is_one_module_file_and_one_overlay(tmp_path) -> None:
    """tests/helpers.py's ColourObjective and this overlay are all it takes: it trains under the CLI with the shared
    optimizer keys, is probed with its baselines, exports, reloads and starts a next stage from its weights."""
    import glob
    import os

    import torch
    from helpers import ColourObjective, tiny_fit_args

    from genlip_lit.checkpoints.loading import load_checkpoint
    from genlip_lit.cli import main
    from genlip_lit.encoders.export import export_vision_encoder, load_vision_encoder

    overlay = tmp_path / "colour.yaml"
    overlay.write_text("model:\n  class_path: helpers.ColourObjective\ntrainer:\n  logger:\n    init_args: {name: colour}\n")
    repo = REPO
    os.chdir(repo)
    args = tiny_fit_args(tmp_path, max_steps=2)
    args = [*args[:3], "--config", str(overlay), *args[3:], "--model.init_args.lr=0.003",
            "--trainer.callbacks+=genlip_lit.callbacks.LinearProbe", "--trainer.callbacks.budget=32",
            "--trainer.callbacks.every_n_steps=2",  # at the last step: before the final checkpoint is written
            "--trainer.callbacks.attentive_epochs=1"]
    assert main(args) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/colour/version_*/checkpoints/last.ckpt")
    module, _ = load_checkpoint(last)
    assert type(module) is ColourObjective and module.hparams["lr"] == 0.003 and module.objective_name
    saved = torch.load(last, weights_only=False)
    # both steps updated the weights: at 74076bd the non-finite guard dropped every gradient of an objective whose
    # training_step does not call skip_if_nonfinite, so this one never trained (AdamW kept no state)
    assert {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()} == {2.0}
    probe = next(v for k, v in saved["callbacks"].items() if k.startswith("Linear"))
    assert {"probe/linear_top1", "probe/pixels_linear_top1", "probe/random_init_linear_top1"} <= set(
        probe["history"][-1])
    encoder = load_vision_encoder(export_vision_encoder(last, str(tmp_path / "enc")))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(encoder(x), module.encode_patches(x), rtol=0, atol=1e-6)
    again = ColourObjective(arch_overrides={"depth": 2, "width": 64, "ffn_hidden": 128}, init_from=last)
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in again.state_dict().items())


def test_weight_decay_scope_all_decays_every_parameter():
    """The authors' recipe: AdamW decays everything (no exemptions), for every objective on a GenLIP config."""
    model = GenLIP(GenLIPConfig.from_name("tiny", vocab_size=30, depth=1, num_registers=2))
    decay, no_decay = param_groups(model, 0.01, scope="all")
    assert not no_decay["params"] and len(decay["params"]) == len(list(model.parameters()))
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule

    tok = OpenCLIPTokenizer("synthetic")
    overrides = {"depth": 1, "weight_decay_scope": "all"}
    for cls in (GenLIPModule, CaptionerModule, ContrastiveModule):
        assert cls(arch="tiny", arch_overrides=overrides, tokenizer=tok).weight_decay_scope() == "all"
    assert GenLIPModule(arch="tiny", tokenizer=tok).weight_decay_scope() == "matrices"
