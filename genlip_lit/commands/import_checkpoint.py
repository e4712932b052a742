"""`genlip import`: a released GenLIP checkpoint, in any registered import format, as a genlip checkpoint.

    genlip import /path/to/GenLIP-So16 --output imports/genlip_so16
    genlip caption --ckpt imports/genlip_so16/genlip.ckpt photo.jpg

SRC is a directory (a config file + model.safetensors, or shards with model.safetensors.index.json, bf16 or
fp32; or a training checkpoint that loads with torch.load(weights_only=True)) or one weights file beside its
config. DIR receives `genlip.ckpt` (what every command takes as --ckpt), `tokenizer.json` (also inside the
checkpoint) and `model.yaml`, a `fit` overlay that starts from the imported weights (`init_from`).
Nothing is downloaded: the user fetches the checkpoint directory.

The formats (detection, architecture, tokenizer, text template, preprocessing, weight mapping) are the
`ImportFormat`s registered in genlip_lit/convert/formats.py; this command only loops over them and does what
every format shares: the checks before any weight is read, and the staged write.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from genlip_lit.errors import GenLIPUserError


@dataclass
class ImportResult:
    path: str  # DIR/genlip.ckpt
    format: str
    arch: str  # the preset the hyper-parameters name, plus `overrides`
    overrides: dict[str, Any]
    num_params: int
    text_template: str


def _config_path(directory: Path, names: Sequence[str]) -> Path:
    for name in names:
        if (directory / name).is_file():
            return directory / name
    raise GenLIPUserError(f"{directory} has no {' or '.join(names)}")


def require_tokenizers() -> None:
    """The released models' tokenizers are Hugging Face `tokenizers` JSON files: name the extra before any work."""
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise GenLIPUserError("genlip import needs the `tokenizers` package (the [hf] extra): "
                              "pip install 'genlip_lit[hf]'") from None


def import_checkpoint(src: str, output: str, format: str | None = None, tokenizer: str | None = None,
                      ema: bool = False, ignore_config_keys: Sequence[str] = (), overwrite: bool = False,
                      max_bytes: int | None = None) -> ImportResult:
    """Convert SRC into DIR/genlip.ckpt (+ tokenizer.json, model.yaml).

    Everything that can be judged cheaply is judged before a weight is read or a module built: --output (see
    commands/output.py), the sizes of config.json and tokenizer.json (`max_bytes` lifts the caps of
    convert/common.py), the architecture against sane caps, the shard paths (inside SRC), and every weight name
    and shape against the config (the converter run on meta tensors from the file headers). The result is
    written beside DIR and moved there whole, so a refusal leaves DIR as it was."""
    require_tokenizers()
    from genlip_lit.commands.output import check_output, staged_output
    from genlip_lit.console.progress import progress
    from genlip_lit.convert import common
    from genlip_lit.convert.formats import TEXT_SETTINGS, config_names, detect_format, get_format
    from genlip_lit.data.tokenizer import HFTokenizer

    check_output(output, "import", overwrite)
    chosen = get_format(format) if format else None  # an unknown --format is refused before SRC is read
    directory = common.source_dir(src)
    config_path = _config_path(directory, config_names(chosen))
    config = common.read_json(config_path, max_bytes or common.MAX_JSON_BYTES)
    fmt = detect_format(config, directory, str(config_path), chosen)
    ignore = tuple(ignore_config_keys)
    tokenizer_file = Path(tokenizer).expanduser() if tokenizer else fmt.tokenizer_file(directory)
    if not tokenizer_file.is_file():
        raise GenLIPUserError(f"no tokenizer file {tokenizer_file} ({fmt.tokenizer_hint}): pass --tokenizer PATH")
    common.check_size(tokenizer_file, max_bytes or common.MAX_TOKENIZER_BYTES, "tokenizer file")
    cfg = fmt.model_config(config, str(config_path), ignore)
    text = fmt.text(config)
    if sorted(text) != sorted(TEXT_SETTINGS):  # a plug-in's mistake, named before any work
        raise TypeError(f"{type(fmt).__name__}.text() must give exactly {TEXT_SETTINGS}, got {tuple(text)}")
    special_ids = fmt.special_ids(config)
    preprocessing = fmt.preprocessing(config, directory)
    common.check_caps(cfg, str(config_path))
    shapes = common.weight_shapes(src, ema, fmt.weights_names)  # headers only
    depth = common.stored_depth(shapes, fmt.layer_pattern)
    if depth != cfg.depth:
        raise GenLIPUserError(f"{config_path} describes {cfg.depth} layers, the weights in {src} hold {depth}")
    fmt.convert(shapes, cfg, str(src))  # every name and shape, on the meta device: nothing read, nothing allocated
    tok = HFTokenizer(str(tokenizer_file), **special_ids)  # read from SRC (size checked), copied only at the end
    with staged_output(output, "import", overwrite) as staging, \
            progress(total=3, description="import", unit="steps") as bar:
        bar.set_postfix("reading the weights")
        state, files = common.load_state(src, ema, fmt.weights_names)
        bar.advance()
        bar.set_postfix("converting")
        weights = fmt.convert(state, cfg, str(src))
        bar.advance()
        bar.set_postfix("building the model, writing genlip.ckpt")
        result = _write(staging, output, tokenizer_file, tok, cfg, text, weights, fmt.name, files, config, ema,
                        preprocessing, src)
        bar.advance()
        bar.set_postfix("")
    return result


def _write(staging: str, output: str, tokenizer_file: Path, tok: Any, cfg: Any, text: dict[str, Any],
           weights: dict[str, Any], fmt: str, files: list[str], config: dict[str, Any], ema: bool,
           preprocessing: Any, src: str) -> ImportResult:
    """STAGING/genlip.ckpt, tokenizer.json and model.yaml from converted weights; every path written into
    them is the final one in `output` (STAGING is moved there)."""
    from genlip_lit.convert import common
    from genlip_lit.modules.genlip import GenLIPModule

    shutil.copyfile(tokenizer_file, os.path.join(staging, "tokenizer.json"))
    tok.path = os.path.abspath(os.path.join(output, "tokenizer.json"))  # where the copy will be
    arch, overrides = common.preset_and_overrides(cfg)
    module = GenLIPModule(arch=arch, arch_overrides=overrides, tokenizer=tok, **text)
    module.model.load_state_dict(weights, strict=True)  # names and shapes were checked by the mapping
    provenance = {"format": fmt, "source": os.path.abspath(src), "files": [os.path.abspath(f) for f in files],
                  "config": config, "ema": ema}
    common.write_checkpoint(module.eval(), staging, preprocessing, provenance)
    path = os.path.join(output, common.CHECKPOINT_NAME)
    _write_fit_overlay(staging, path, module, tok)
    num_params = sum(p.numel() for p in module.parameters())
    return ImportResult(path, fmt, arch, overrides, num_params, text["text_template"])


def _write_fit_overlay(directory: str, ckpt: str, module: Any, tok: Any) -> None:
    """DIR/model.yaml: the imported architecture, tokenizer and text format as a `fit` config, weights via
    init_from (compose after a run config: genlip fit --config RUN.yaml --config DIR/model.yaml)."""
    import yaml

    from genlip_lit.convert.formats import TEXT_SETTINGS

    hp = dict(module.hparams)
    init_args = {k: hp[k] for k in ("arch", "arch_overrides", *TEXT_SETTINGS)}
    init_args["tokenizer"] = {"class_path": "genlip_lit.data.tokenizer.HFTokenizer", "init_args": tok.init_args()}
    init_args["init_from"] = os.path.abspath(ckpt)
    doc = {"model": {"class_path": "genlip_lit.modules.GenLIPModule", "init_args": init_args}}
    with open(os.path.join(directory, "model.yaml"), "w") as f:
        overlay = os.path.join(os.path.dirname(ckpt), "model.yaml")
        f.write(f"# written by `genlip import`: start a fit from {os.path.abspath(ckpt)}\n"
                f"#   genlip fit --config experiments/stage2_corpus.yaml --config {overlay}\n"
                "# (weights only: optimizer and schedule start fresh; the run config's optimizer settings apply)\n")
        yaml.safe_dump(doc, f, sort_keys=False)


def build_parser() -> Any:
    from jsonargparse import ActionYesNo

    from genlip_lit.commands.common import add_output, command_parser
    from genlip_lit.convert.formats import formats, option_notes

    known = formats()
    p = command_parser("import", "Convert a released GenLIP checkpoint ("
                       + ", or ".join(fmt.description for fmt in known.values())
                       + ") into a genlip checkpoint that every command accepts as --ckpt.")
    p.add_argument("src", type=str, help="checkpoint directory (config.json + safetensors) or a weights file beside "
                   "config.json")
    add_output(p, help="directory for genlip.ckpt, tokenizer.json and model.yaml")
    p.add_argument("--format", type=Literal[tuple(known)] | None, default=None, help="null: detected from config.json")
    p.add_argument("--tokenizer", type=str | None, default=None, help="a tokenizers JSON file (null: "
                   + "; ".join(["SRC/tokenizer.json", *option_notes("tokenizer")]) + ")")
    p.add_argument("--ema", action=ActionYesNo, default=False,
                   help="; ".join(option_notes("ema")) or "a training checkpoint: take state_dict_ema")
    p.add_argument("--max-bytes", type=str | None, default=None, help="size cap of config.json and "
                   "tokenizer.json, e.g. 256MiB (null: 4MiB for config files, 64MiB for the tokenizer)")
    p.add_argument("--ignore-config-key", nargs="+", type=str, default=[], help="config keys known not to change "
                   "the architecture (several: --ignore-config-key A B, or repeat the flag)")
    return p


def main(argv: list[str] | None = None) -> int:
    from genlip_lit.commands.common import parse

    args = parse(build_parser(), argv, repeatable=("--ignore-config-key",))
    from genlip_lit.ingest.safe_read import parse_bytes

    try:
        max_bytes = parse_bytes(args.max_bytes) if args.max_bytes is not None else None
    except ValueError as err:
        raise GenLIPUserError(f"--max-bytes: {err}") from None
    res = import_checkpoint(args.src, args.output, args.format, args.tokenizer, args.ema, args.ignore_config_key,
                            args.overwrite, max_bytes)
    print(f"wrote {res.path} ({res.format} checkpoint, {res.num_params / 1e6:.1f}M parameters, arch {res.arch!r} "
          f"+ {len(res.overrides)} overrides, text template {res.text_template!r}), "
          f"{os.path.join(args.output, 'tokenizer.json')} and {os.path.join(args.output, 'model.yaml')}")
    return 0
