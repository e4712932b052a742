"""`genlip fit --help`: the project's model and data keys first, with defaults and one-line meanings.

    genlip fit --help                                   # this page (~100 lines): model, data, the usual trainer keys
    genlip fit --help --config experiments/corpus_cpu.yaml   # the model class that config names, its values as defaults
    genlip fit --help full                              # Lightning's complete help (every trainer key, ~660 lines)
    genlip fit --model.help GenLIPModule                # short class names work (also --data.help GenLIPDataModule)

Lightning's own help lists every Trainer argument but no model or data key (those sit behind `--model.help
CLASS_PATH`), and it takes seconds to build. This page reads the classes' signatures and the `Args:` sections
of their docstrings (the data module's meanings are kept here, checked against its signature by the tests).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

# GenLIPDataModule's arguments, one line each (tests/commands/test_fit_help.py: every argument has one)
DATA_KEYS: dict[str, str] = {
    "data_dir": "`genlip optimize` output (train/ and val/), local or s3://...; a list mixes several",
    "weights": "sampling weight of each data_dir (a mixture); null: read each to its end",
    "synthetic": "the embedded synthetic scenes instead of data_dir: {num_train, num_val, image_size, ...}",
    "cache_dir": "where the synthetic data (or remote chunks) are cached; null: $GENLIP_CACHE",
    "image_size": "model input side in pixels (stage 1, fixed resolution)",
    "mean": "per-channel normalisation mean",
    "std": "per-channel normalisation std",
    "batch_size": "per-device training batch",
    "val_batch_size": "validation batch; null: batch_size",
    "num_workers": "loader processes; 0 loads in the training process (faster on 2 cores)",
    "shuffle": "shuffle training shards and samples (seeded)",
    "seed": "shuffling seed",
    "drop_last": "drop the last partial batch; null: only under DDP, to keep ranks equal",
    "max_cache_size": "most disk litdata's chunk cache may use (remote data)",
    "resolution": "fixed (resize + crop to image_size) or native (aspect kept, packed rows: stage 2)",
    "min_patches": "native: fewest patches per image",
    "max_patches": "native: most patches per image",
    "max_tokens": "native: tokens per packed row",
    "pad_to_multiple": "native: rows padded to a multiple of this",
    "patch_size": "null: the model's",
    "caption_encoder": "null: the model's text format (set by genlip fit)",
}
TRAINER_KEYS: dict[str, str] = {
    "trainer.max_steps": "optimizer steps (also the length of the cosine schedule)",
    "trainer.accelerator": "cpu, gpu or auto",
    "trainer.devices": "devices per node (or auto)",
    "trainer.precision": "32-true on CPU, bf16-mixed on GPU",
    "trainer.val_check_interval": "validate every N training steps",
    "trainer.limit_val_batches": "validation batches per check",
    "trainer.log_every_n_steps": "how often train metrics are logged",
    "trainer.accumulate_grad_batches": "batches per optimizer step",
    "trainer.logger.init_args.save_dir": "where runs go (runs/NAME/version_N)",
    "trainer.callbacks": "evaluations during fit (LinearProbe, PatchReadout, CaptionSamples, ZeroShot, ...)",
    "checkpoint.every_n_train_steps": "also keep a checkpoint every N steps (last.ckpt always)",
    "seed_everything": "global seed (model init, shuffling)",
}
PROJECT_FLAGS = (
    ("--config FILE", "a YAML config (several compose, later ones win): experiments/quickstart.yaml, ..."),
    ("--print_config", "print the merged config and stop"),
    ("--threads auto|N|0", "torch CPU threads: auto follows the cores other processes leave free"),
    ("--ckpt_path FILE", "resume a run from its checkpoint (weights, optimizer, step, data position)"),
    ("--help full", "Lightning's complete help: every trainer key"),
    ("--model.help NAME", "every key of a model class (GenLIPModule, ContrastiveModule, CaptionerModule)"),
    ("--data.help GenLIPDataModule", "every key of the data module, with types"),
)
DEFAULT_MODEL = "genlip_lit.modules.genlip.GenLIPModule"
DATA_CLASS = "genlip_lit.data.datamodule.GenLIPDataModule"


def docstring_args(cls: type) -> dict[str, str]:
    """`name: meaning` of the `Args:` sections along the class's MRO (first sentence, one line)."""
    found: dict[str, str] = {}
    for klass in cls.__mro__:
        doc = inspect.getdoc(klass) or ""
        block = doc.split("Args:", 1)[1] if "Args:" in doc else ""
        for name, text in re.findall(r"^ {4}(\*{0,2}\w+): (.+(?:\n {8}.+)*)", block, flags=re.M):
            one_line = " ".join(text.split())
            first = re.split(r"\.\s+(?=[A-Z(])", one_line)[0].rstrip(".")  # "e.g. x" is not a sentence end
            found.setdefault(name, first if len(first) <= 100 else first[:97] + "...")
    return found


def model_keys(cls: type) -> list[tuple[str, Any, str]]:
    """(key, default, meaning) of a module class, its own arguments then the shared training ones."""
    meanings = docstring_args(cls)
    rows, seen = [], set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for name, param in inspect.signature(init).parameters.items():
            if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or name in seen:
                continue
            seen.add(name)
            rows.append((name, param.default, meanings.get(name, "")))
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break  # no **kwargs: the parents' arguments are not this class's
    return rows


_LIGHTNING_DEFAULT = object()  # a trainer key the config leaves to Lightning


def _shown(value: Any) -> str:
    if value is _LIGHTNING_DEFAULT:
        return "(Lightning's)"
    if value is inspect.Parameter.empty:
        return "(required)"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _section(title: str, rows: list[tuple[str, Any, str]], overrides: dict[str, Any]) -> list[str]:
    width = max((len(k) for k, _, _ in rows), default=0)
    lines = [title]
    for key, default, meaning in rows:
        value = _shown(overrides.get(key, default))
        value = value if len(value) <= 24 else value[:21] + "..."
        lines.append(f"  {key:<{width}}  {value:<24}  {meaning}")
    return lines + [""]


def config_values(config: dict[str, Any], section: str) -> tuple[str | None, dict[str, Any]]:
    """(class_path, values) of a config section: `init_args` under a class path, else the section's own keys."""
    block = config.get(section) if isinstance(config.get(section), dict) else {}
    if "class_path" in block or "init_args" in block:
        return block.get("class_path"), dict(block.get("init_args") or {})
    return None, dict(block)


# What each LightningCLI command does, the help page's first sentence
LEADS: dict[str, str] = {
    "fit": "Trains a model from YAML configs",
    "validate": "Runs the validation loop of a config on a trained model (--ckpt_path FILE)",
    "test": "Runs the test loop of a config on a trained model (--ckpt_path FILE)",
    "predict": "Runs the predict loop (captions) of a config on a trained model (--ckpt_path FILE)",
}


def key_page(command: str, lead: str, flags: tuple[tuple[str, str], ...],
             sections: list[tuple[str, list[tuple[str, Any, str]], dict[str, Any]]], footer: list[str]) -> str:
    """A command's short help: usage, what it does, its flags, then (title, rows, config values) key sections."""
    lines = [f"usage: genlip {command} --config FILE [--config FILE ...] [--SECTION.KEY VALUE ...]", "",
             f"{lead}; any key below can be set in a config or on the command line.", "",
             "Options:", *[f"  {flag:<30}  {text}" for flag, text in flags], ""]
    for title, rows, values in sections:
        lines += _section(title, rows, values)
    return "\n".join(lines + footer)


def trainer_rows(config: dict[str, Any], keys: dict[str, str]) -> list[tuple[str, Any, str]]:
    """(key, the config's value or Lightning's default, meaning) of the usual trainer keys."""
    return [(key, _nested(config, key), text) for key, text in keys.items()]


def short_help(config: dict[str, Any] | None = None, command: str = "fit") -> str:
    """The page `genlip fit --help` prints (config: the merged YAML of the --config files given, if any)."""
    import importlib

    config = config or {}
    model_path, model_values = config_values(config, "model")
    model_path = resolve_short(model_path or DEFAULT_MODEL, "model")
    module_name, _, class_name = model_path.rpartition(".")
    model_cls = getattr(importlib.import_module(module_name), class_name)
    from genlip_lit.data.datamodule import GenLIPDataModule

    _, data_values = config_values(config, "data")
    data_rows = [(name, p.default, DATA_KEYS.get(name, ""))
                 for name, p in inspect.signature(GenLIPDataModule.__init__).parameters.items() if name != "self"]
    where = "values: the config's, else the class defaults" if config else "values: the class defaults"
    sections = [
        (f"Model keys: --model.init_args.KEY ({model_cls.__name__}; {where})", model_keys(model_cls), model_values),
        (f"Data keys: --data.init_args.KEY (GenLIPDataModule; {where})", data_rows, data_values),
        ("Trainer and checkpoint keys (the usual ones; all: genlip fit --help full)", trainer_rows(config, TRAINER_KEYS),
         {}),
    ]
    footer = ["Configs: experiments/quickstart.yaml (embedded data, CPU), experiments/corpus_cpu.yaml (your shards,",
              "CPU), experiments/stage1_corpus.yaml (GPU); docs/configs.md explains the sections."]
    return key_page(command, LEADS.get(command, LEADS["fit"]), PROJECT_FLAGS, sections, footer)


def _nested(config: dict[str, Any], dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _LIGHTNING_DEFAULT
        value = value[part]
    return value if not isinstance(value, (list, dict)) else f"({len(value)} entries)"


def merged_configs(argv: list[str]) -> dict[str, Any]:
    """The --config files of `argv` merged as LightningCLI merges them (later files win, key by key)."""
    import yaml

    from genlip_lit.commands.common import config_files

    merged: dict[str, Any] = {}
    for path in config_files(argv) + config_files(argv, "-c"):
        with open(path, encoding="utf-8") as fh:
            _merge(merged, yaml.safe_load(fh) or {})
    return merged


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def resolve_short(name: str, section: str) -> str:
    """A short class name (`GenLIPModule`, `GenLIPDataModule`) as its dotted path; other names unchanged."""
    if "." in name:
        return name
    if section == "data":
        return DATA_CLASS if name == DATA_CLASS.rpartition(".")[2] else name
    from genlip_lit.checkpoints.registry import known

    matches = [path for path in known("module") if path.rpartition(".")[2] == name]
    return max(matches, key=len) if matches else name  # a public alias and its full path: the full one


def help_request(argv: list[str]) -> tuple[str | None, list[str]]:
    """What `--help` asks for: ("short", argv) for the project's page, ("full", argv without the word `full`) for
    Lightning's complete help, or (None, argv) when no help is asked."""
    asked = [i for i, token in enumerate(argv) if token in ("--help", "-h")]
    if not asked:
        return None, argv
    at = asked[0] + 1
    if at < len(argv) and argv[at] == "full":
        return "full", argv[:at] + argv[at + 1:]
    return "short", argv


def expand_help_names(argv: list[str]) -> list[str]:
    """`--model.help GenLIPModule` -> `--model.help genlip_lit.modules.genlip.GenLIPModule` (and the `=` form)."""
    out = list(argv)
    for i, token in enumerate(out):
        for section in ("model", "data"):
            flag = f"--{section}.help"
            if token == flag and i + 1 < len(out):
                out[i + 1] = resolve_short(out[i + 1], section)
            elif token.startswith(flag + "="):
                out[i] = f"{flag}={resolve_short(token.split('=', 1)[1], section)}"
    return out
