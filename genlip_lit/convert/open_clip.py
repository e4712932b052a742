"""open_clip's GenLIP (`NaFlexGenLip`, mlfoundations/open_clip) as genlip_lit weights.

    genlip import /path/to/naflexgenlip_so16 --output imports/oc_so16 --tokenizer cl100k_base.json

Layout (tests/fixtures/open_clip/README.md): a Linear patch embedding over channels-last flattened patches
(`patch_embed.proj`, = our Conv2d weight permuted), `text_embed`, the text bottleneck `in_proj` / `out_proj`,
`trunk.layers.{i}` blocks named as in the official code but with no attention / FFN biases, `trunk.ln_post`,
`lm_head`, and `visual.*` aliases of the image parts (checked equal, then dropped). Text is
`[BOS] caption [EOS]` over tiktoken cl100k_base with eos / pad / bos appended after its vocabulary; our "genlip"
template is exactly that (their extra target, BOS predicted from the last image slot, has no counterpart in a
captioner that is given BOS; tests/convert/test_open_clip.py compares both). The tokenizer needs a download we never
do: give a tokenizers JSON of cl100k_base with --tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor

from genlip_lit.convert.common import StateMapper, check_config_keys, expected_shapes, move_block
from genlip_lit.convert.formats import ImportFormat, register_format
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import GenLIPConfig

TEMPLATE = "genlip"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # open_clip's default PreprocessCfg
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

_GENLIP_MAPPED = {"width", "depth", "num_heads", "head_dim", "intermediate_size", "text_embed_dim", "mrope_section",
                  "rope_theta", "ls_init_value", "drop_path_rate", "gated_attention", "use_swiglu_ffn",
                  "mrope_interleaved", "hidden_act", "layer_norm_eps", "attention_bias", "mlp_bias"}
# options genlip_lit does not have: refused when on
_GENLIP_UNSUPPORTED = ("qk_norm", "input_norm", "pre_norm")
# batching (pack_prefix: how image slots are laid out in a row) and limits: no effect on the weights' function
_GENLIP_INERT = {"max_position_embeddings", "pack_prefix"}
_VISION_KEYS = {"image_size", "patch_size", "in_chans"}
_TEXT_KEYS = {"vocab_size", "context_length", "pad_id", "bos_id", "eos_id", "tokenizer_type", "tiktoken_name",
              "hf_tokenizer_name"}


def model_config_of(config: dict[str, Any]) -> dict[str, Any]:
    """The model config inside an open_clip JSON (a bare model config, or a hub `open_clip_config.json`)."""
    return config["model_cfg"] if isinstance(config.get("model_cfg"), dict) else config


def config_from_open_clip(config: dict[str, Any], origin: str = "config.json", ignore: tuple[str, ...] = ()
                          ) -> GenLIPConfig:
    """The GenLIPConfig of an open_clip GenLIP model config; options we lack are refused by name."""
    model = model_config_of(config)
    check_config_keys(model, {"embed_dim", "genlip_cfg", "vision_cfg", "text_cfg", "custom_text"}, origin, ignore)
    g, vision, text = model["genlip_cfg"], model.get("vision_cfg") or {}, model.get("text_cfg") or {}
    check_config_keys(g, _GENLIP_MAPPED | set(_GENLIP_UNSUPPORTED) | _GENLIP_INERT, f"{origin} genlip_cfg", ignore)
    check_config_keys(vision, _VISION_KEYS, f"{origin} vision_cfg", ignore)
    check_config_keys(text, _TEXT_KEYS, f"{origin} text_cfg", ignore)
    for option in _GENLIP_UNSUPPORTED:
        if g.get(option):
            raise GenLIPUserError(f"{origin}: genlip_cfg.{option}=true is not supported by genlip_lit")
    try:
        width, heads, depth = int(g["width"]), int(g["num_heads"]), int(g["depth"])
        ffn, vocab = int(g["intermediate_size"]), int(text["vocab_size"])
    except KeyError as err:
        raise GenLIPUserError(f"{origin}: missing key {err.args[0]!r}") from None
    embed_dim = model.get("embed_dim", width)
    if embed_dim != width:
        raise GenLIPUserError(f"{origin}: embed_dim {embed_dim} != width {width} adds `visual.proj`, which has no "
                              "counterpart in genlip_lit")
    swiglu = bool(g.get("use_swiglu_ffn", True))
    act = g.get("hidden_act", "silu")
    if (swiglu and act not in ("silu", "swish")) or (not swiglu and act != "gelu"):
        raise GenLIPUserError(f"{origin}: hidden_act={act!r} with use_swiglu_ffn={swiglu} is not supported")
    ls = g.get("ls_init_value", 0.1)
    attn_bias, mlp_bias = bool(g.get("attention_bias", False)), bool(g.get("mlp_bias", False))
    return GenLIPConfig(
        width=width, depth=depth, num_heads=heads, head_dim=int(g.get("head_dim") or width // heads),
        ffn_hidden=ffn, ffn_type="swiglu" if swiglu else "gelu", patch_size=int(vision.get("patch_size", 16)),
        in_chans=int(vision.get("in_chans", 3)), vocab_size=vocab, text_width=int(g.get("text_embed_dim") or width),
        qkv_bias=attn_bias, out_bias=attn_bias, ffn_bias=mlp_bias, norm_eps=float(g.get("layer_norm_eps", 1e-6)),
        layer_scale_init=float(ls) if ls else None, drop_path=float(g.get("drop_path_rate", 0.0)),
        gated_attn=bool(g.get("gated_attention", True)),
        mrope_layout="interleaved" if g.get("mrope_interleaved", True) else "contiguous",
        mrope_section=tuple(g.get("mrope_section") or ()) or None, rope_theta=float(g.get("rope_theta", 10000.0)),
    )


def convert_open_clip_state(state: dict[str, Tensor], cfg: GenLIPConfig, origin: str = "checkpoint"
                            ) -> dict[str, Tensor]:
    """open_clip NaFlexGenLip state dict -> GenLIP state dict; `visual.*` aliases must equal their originals."""
    m = StateMapper(state, expected_shapes(cfg), origin)
    p, c = cfg.patch_size, cfg.in_chans

    def to_conv(w: Tensor) -> Tensor:  # Linear over (py, px, c) -> Conv2d [out, c, py, px]
        if tuple(w.shape[1:]) != (p * p * c,):
            raise GenLIPUserError(f"{origin}: 'patch_embed.proj.weight' has shape {list(w.shape)}, patch "
                                  f"{p} x {p} x {c} needs {[w.shape[0], p * p * c]}")
        return w.reshape(w.shape[0], p, p, c).permute(0, 3, 1, 2).contiguous()

    originals: dict[str, Tensor] = {}
    originals["patch_embed.proj.weight"] = m.move("patch_embed.proj.weight", "patch_embed.weight", to_conv)
    originals["patch_embed.proj.bias"] = m.move("patch_embed.proj.bias", "patch_embed.bias")
    for i in range(cfg.depth):
        move_block(m, cfg, f"trunk.layers.{i}.", f"blocks.{i}.", originals)
    for param in ("weight", "bias"):
        originals[f"trunk.ln_post.{param}"] = m.move(f"trunk.ln_post.{param}", f"norm.{param}")
    m.move("text_embed.weight", "tok_embed.weight")
    if cfg.has_text_bottleneck:
        for param in ("weight", "bias"):
            m.move(f"in_proj.{param}", f"text_in_proj.{param}")
            m.move(f"out_proj.{param}", f"text_out_proj.{param}")
    m.move("lm_head.weight", "lm_head.weight")
    for key, value in originals.items():  # `visual` shares the patch embedding and trunk modules
        m.drop_alias(f"visual.{key}", key, value)
    return m.finish()


@register_format
class OpenCLIPFormat(ImportFormat):
    """open_clip's `NaFlexGenLip`: a model config with `genlip_cfg` (bare, or a hub open_clip_config.json)."""

    name = "open_clip"
    description = "open_clip's NaFlexGenLip"
    option_notes = {"tokenizer": "needs one for cl100k_base", "ema": "training checkpoint: take state_dict_ema"}
    detected_by = "an open_clip GenLIP model config (genlip_cfg)"
    tokenizer_hint = ("open_clip's GenLIP reads tiktoken cl100k_base, which needs a download: give a tokenizers "
                      "JSON of cl100k_base")
    config_names = ("config.json", "open_clip_config.json")
    weights_names = ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")  # hub names

    def detect(self, config: dict[str, Any], directory: Path) -> bool:
        return isinstance(model_config_of(config).get("genlip_cfg"), dict)

    def model_config(self, config: dict[str, Any], origin: str, ignore: tuple[str, ...] = ()) -> GenLIPConfig:
        return config_from_open_clip(config, origin, ignore)

    def text(self, config: dict[str, Any]) -> dict[str, Any]:
        """No prompt; captions fit the context length with BOS and EOS."""
        context = int((model_config_of(config).get("text_cfg") or {}).get("context_length", 256))
        return {"prompt": None, "text_template": TEMPLATE, "max_text_len": context,
                "caption_max_new_tokens": min(256, context - 2)}

    def special_ids(self, config: dict[str, Any]) -> dict[str, int]:
        """eos / pad / bos ids of the text config (appended after the base vocabulary)."""
        text = model_config_of(config).get("text_cfg") or {}
        missing = [k for k in ("eos_id", "pad_id", "bos_id") if k not in text]
        if missing:
            raise GenLIPUserError(f"text_cfg has no {missing[0]}: open_clip GenLIP configs name eos_id, pad_id, "
                                  "bos_id")
        return {k: int(text[k]) for k in ("eos_id", "pad_id", "bos_id")}

    def preprocessing(self, config: dict[str, Any], directory: Path) -> dict[str, Any]:
        """Image size from vision_cfg, mean/std from a hub `preprocess_cfg` (else open_clip's OpenAI defaults)."""
        vision = model_config_of(config).get("vision_cfg") or {}
        pre = config.get("preprocess_cfg") or {}
        size = pre.get("size", vision.get("image_size", 224))
        size = size[0] if isinstance(size, list | tuple) else size
        return {"image_size": int(size), "mean": [float(v) for v in pre.get("mean", OPENAI_MEAN)],
                "std": [float(v) for v in pre.get("std", OPENAI_STD)]}

    def convert(self, state: dict[str, Tensor], cfg: GenLIPConfig, origin: str) -> dict[str, Tensor]:
        return convert_open_clip_state(state, cfg, origin)
