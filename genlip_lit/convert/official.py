"""The authors' GenLIP checkpoints (YanFangCS/GenLIP `GenLIPModel`, Hugging Face layout) as genlip_lit weights.

    genlip import /path/to/GenLIP-So16 --output imports/genlip_so16

Layout (tests/fixtures/official/README.md): `vision_embeddings.patch_embedding` (Conv2d), `visual.layers.{i}`
blocks whose `self_attn.q_proj` is the fused [query ; gate] Linear(d, 2d) (split here into our `q_proj` and
`gate_proj`), `mlp.gate_fc` / `fc1` / `fc2` (SwiGLU: silu(gate_fc) * fc1), `layer_scale{1,2}.lambda1`,
`ln_post`, `embeddings`, the optional text bottleneck `in_proj` / `proj`, and an untied `lm_head`. Biases on
every linear. The released models caption with the "official" text template: prompt "Describe the image in
detail." (no loss), caption, `<|im_end|>` + newline, no BOS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from genlip_lit.convert.common import StateMapper, check_config_keys, expected_shapes, move_block, read_json
from genlip_lit.convert.formats import ImportFormat, register_format
from genlip_lit.data.transforms import Preprocessing
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import GenLIPConfig

PROMPT = "Describe the image in detail."  # the authors' caption prompt (conv_preprocess 'recap_datacomp_1b')
TEMPLATE = "official"
# what the authors' stage-1 image processor does (google/siglip2-base-patch16-224): our training defaults too
DEFAULT_PREPROCESSING = Preprocessing().as_dict()

# config keys that must hold this value: anything else is an architecture we do not have
_REQUIRED = {"attention_dropout": 0.0, "use_llm_head": False, "llm_decoder": None, "tie_word_embeddings": False,
             "spatial_merge_size": 1}
_MAPPED = {"num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "head_dim",
           "patch_size", "num_channels", "hidden_act", "use_swiglu_ffn", "ls_init_value", "drop_path_rate",
           "text_embed_dim", "vocab_size", "gated_attention", "mrope_interleaved", "rope_theta", "rope_scaling",
           "layer_norm_eps"}
# read by the authors' training or data code only, or metadata: no effect on the weights' function
_INERT = {"architectures", "model_type", "torch_dtype", "dtype", "initializer_range", "max_position_embeddings",
          "use_liger_kernel", "tokens_per_second", "vision_start_token_id", "vision_end_token_id",
          "transformers_version", "_name_or_path", "_attn_implementation", "bos_token_id", "eos_token_id",
          "pad_token_id"}


def config_from_official(config: dict[str, Any], origin: str = "config.json", ignore: tuple[str, ...] = ()
                         ) -> GenLIPConfig:
    """The GenLIPConfig of an official config.json; options we lack are refused by name."""
    check_config_keys(config, _MAPPED | set(_REQUIRED) | _INERT, origin, ignore)
    for key, value in _REQUIRED.items():
        if key in config and config[key] != value and key not in ignore:
            raise GenLIPUserError(f"{origin}: {key}={config[key]!r} is not supported (genlip_lit needs {value!r})")
    try:
        width, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
        depth, ffn = int(config["num_hidden_layers"]), int(config["intermediate_size"])
        vocab = int(config["vocab_size"])
    except KeyError as err:
        raise GenLIPUserError(f"{origin}: missing key {err.args[0]!r}") from None
    swiglu = bool(config.get("use_swiglu_ffn", True))
    act = config.get("hidden_act", "silu")
    if (swiglu and act not in ("silu", "swish")) or (not swiglu and act != "gelu"):
        raise GenLIPUserError(f"{origin}: hidden_act={act!r} with use_swiglu_ffn={swiglu} is not supported "
                              "(SwiGLU takes silu, the plain FFN exact gelu)")
    scaling = config.get("rope_scaling") or {}
    if scaling.get("type", scaling.get("rope_type", "mrope")) != "mrope" or "mrope_section" not in scaling:
        raise GenLIPUserError(f"{origin}: rope_scaling must be M-RoPE with an mrope_section, got {scaling!r}")
    ls = config.get("ls_init_value", 0.1)
    return GenLIPConfig(
        width=width, depth=depth, num_heads=heads, head_dim=int(config.get("head_dim") or width // heads),
        ffn_hidden=ffn, ffn_type="swiglu" if swiglu else "gelu", patch_size=int(config.get("patch_size", 16)),
        in_chans=int(config.get("num_channels", 3)), vocab_size=vocab,
        text_width=int(config.get("text_embed_dim") or width), norm_eps=float(config.get("layer_norm_eps", 1e-6)),
        layer_scale_init=float(ls) if ls else None, drop_path=float(config.get("drop_path_rate", 0.0)),
        gated_attn=bool(config.get("gated_attention", True)),
        mrope_layout="interleaved" if config.get("mrope_interleaved", True) else "contiguous",
        mrope_section=tuple(scaling["mrope_section"]), rope_theta=float(config.get("rope_theta", 10000.0)),
        # the authors' training recipe, for whoever continues training from these weights
        drop_path_schedule="uniform", weight_decay_scope="all", attn_init="xavier",
    )


def convert_official_state(state: dict[str, Tensor], cfg: GenLIPConfig, origin: str = "checkpoint"
                           ) -> dict[str, Tensor]:
    """Official state dict -> GenLIP state dict (names, the fused q/gate split); strict both ways."""
    m = StateMapper(state, expected_shapes(cfg), origin)
    m.move("vision_embeddings.patch_embedding.weight", "patch_embed.weight")
    m.move("vision_embeddings.patch_embedding.bias", "patch_embed.bias")
    for i in range(cfg.depth):
        move_block(m, cfg, f"visual.layers.{i}.", f"blocks.{i}.")
    for p in ("weight", "bias"):
        m.move(f"ln_post.{p}", f"norm.{p}")
    m.move("embeddings.weight", "tok_embed.weight")
    if cfg.has_text_bottleneck:
        for p in ("weight", "bias"):
            m.move(f"in_proj.{p}", f"text_in_proj.{p}")
            m.move(f"proj.{p}", f"text_out_proj.{p}")
    m.move("lm_head.weight", "lm_head.weight")
    return m.finish()


@register_format
class OfficialFormat(ImportFormat):
    """The authors' Hugging Face layout: config.json (model_type 'genlip'), safetensors, Qwen3's tokenizer.json."""

    name = "official"
    description = "the authors' Hugging Face layout"
    detected_by = "an official GenLIP config (model_type 'genlip')"
    tokenizer_hint = "the authors ship Qwen3's tokenizer.json with the weights"

    def detect(self, config: dict[str, Any], directory: Path) -> bool:
        return config.get("model_type") == "genlip" or "GenLIPModel" in (config.get("architectures") or [])

    def model_config(self, config: dict[str, Any], origin: str, ignore: tuple[str, ...] = ()) -> GenLIPConfig:
        return config_from_official(config, origin, ignore)

    def text(self, config: dict[str, Any]) -> dict[str, Any]:
        return {"prompt": PROMPT, "text_template": TEMPLATE, "max_text_len": 512, "caption_max_new_tokens": 256}

    def preprocessing(self, config: dict[str, Any], directory: Path) -> dict[str, Any]:
        """Image size and mean/std from the directory's image processor config, else the authors' defaults."""
        out = dict(DEFAULT_PREPROCESSING)
        path = directory / "preprocessor_config.json"
        if not path.is_file():
            return out
        proc = read_json(path)
        size = proc.get("size") or proc.get("crop_size")
        if isinstance(size, dict):
            size = size.get("height") or size.get("shortest_edge")
        if isinstance(size, int) and size > 0:
            out["image_size"] = size
        for theirs, ours in (("image_mean", "mean"), ("image_std", "std")):
            value = proc.get(theirs)
            if isinstance(value, list) and len(value) == 3:
                out[ours] = [float(v) for v in value]
        return out

    def convert(self, state: dict[str, Tensor], cfg: GenLIPConfig, origin: str) -> dict[str, Tensor]:
        return convert_official_state(state, cfg, origin)
