"""What `genlip plan` reads from the YAML files `genlip fit` takes: model, data and trainer settings, composed.

    genlip plan --config experiments/stage1_corpus.yaml --config experiments/scale/fsdp2.yaml

Several `--config` files compose the way LightningCLI composes them (nested keys merge, later files win, a new
`class_path` drops the old `init_args`), and `--key.sub value` overrides apply last. Nothing is instantiated
except the tokenizer (for its vocabulary size and the length of the loss-free prompt), and only tokenizers of
`genlip_lit.data.tokenizer`: a config names classes, and a planner must not import whatever a file names.
Defaults are those of GenLIPModule, GenLIPDataModule and Lightning's Trainer.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from genlip_lit.errors import GenLIPUserError

GENLIP_MODULES = ("genlip_lit.modules.GenLIPModule", "genlip_lit.modules.genlip.GenLIPModule")


@dataclass
class RunConfig:
    """The settings of a run that decide its cost."""

    sources: list[str] = field(default_factory=list)
    arch: str = "tiny"
    arch_overrides: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] | None = None  # {class_path, init_args}; None = OpenCLIPTokenizer()
    prompt: str | None = None
    max_text_len: int = 64
    resolution: str = "fixed"
    image_size: int = 224
    batch_size: int = 32  # samples per GPU per forward (the micro-batch)
    min_patches: int = 16
    max_patches: int = 1024
    max_tokens: int = 16384
    pad_to_multiple: int = 8
    precision: str = "32-true"
    strategy: Any = "auto"
    accumulate: int = 1
    devices: Any = "auto"
    num_nodes: int = 1
    max_steps: int = -1

    @property
    def world_size(self) -> int | None:
        """GPUs the config itself names (devices x num_nodes), or None when devices is "auto" / -1 / a list."""
        devices = self.devices
        if isinstance(devices, str) and devices.strip().isdigit():
            devices = int(devices)
        if isinstance(devices, int) and devices > 0:
            return devices * int(self.num_nodes)
        if isinstance(devices, (list, tuple)):
            return len(devices) * int(self.num_nodes)
        return None


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """LightningCLI-style composition: dicts merge key by key, anything else is replaced; a different
    class_path replaces the node's init_args instead of merging into them."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            if "class_path" in value and old.get("class_path") not in (None, value["class_path"]):
                out[key] = copy.deepcopy(value)
            else:
                out[key] = merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError:
        raise GenLIPUserError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise GenLIPUserError(f"config file {path!r} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise GenLIPUserError(f"config file {path!r} must hold a mapping at the top level")
    return data


def apply_override(config: dict[str, Any], dotted: str, raw: str) -> dict[str, Any]:
    """`model.init_args.arch` = `so16` (the value read as YAML, as on the `genlip fit` command line)."""
    keys = [k for k in dotted.split(".") if k]
    if not keys:
        raise GenLIPUserError(f"override --{dotted} names no key")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    node: dict[str, Any] = value
    for key in reversed(keys):
        node = {key: node}
    return merge(config, node)


def _init_args(node: Any) -> dict[str, Any]:
    if isinstance(node, dict):
        return dict(node.get("init_args") or {k: v for k, v in node.items() if k != "class_path"})
    return {}


def read_run_config(paths: list[str], overrides: list[tuple[str, str]] | None = None) -> RunConfig:
    """Compose `paths` (later wins), apply `overrides`, and pick out what planning needs."""
    raw: dict[str, Any] = {}
    for path in paths:
        raw = merge(raw, load_yaml(path))
    for dotted, value in overrides or []:
        raw = apply_override(raw, dotted, value)
    model = raw.get("model") or {}
    class_path = model.get("class_path", GENLIP_MODULES[0]) if isinstance(model, dict) else None
    if class_path not in GENLIP_MODULES:
        raise GenLIPUserError(f"genlip plan covers GenLIPModule configs; model.class_path is {class_path!r}")
    margs, dargs = _init_args(model), _init_args(raw.get("data"))
    trainer = raw.get("trainer") or {}
    run = RunConfig(sources=list(paths))
    run.arch = str(margs.get("arch", run.arch))
    run.arch_overrides = dict(margs.get("arch_overrides") or {})
    run.tokenizer = margs.get("tokenizer")
    run.prompt = margs.get("prompt")
    run.max_text_len = int(margs.get("max_text_len", run.max_text_len))
    for key in ("resolution", "image_size", "batch_size", "min_patches", "max_patches", "max_tokens",
                "pad_to_multiple"):
        if dargs.get(key) is not None:
            setattr(run, key, type(getattr(run, key))(dargs[key]))
    if run.resolution not in ("fixed", "native"):
        raise GenLIPUserError(f"data.resolution must be 'fixed' or 'native', got {run.resolution!r}")
    if run.batch_size < 1:
        raise GenLIPUserError(f"data.batch_size must be >= 1, got {run.batch_size}")
    run.precision = str(trainer.get("precision") or run.precision)
    run.strategy = trainer.get("strategy", run.strategy)
    run.accumulate = int(trainer.get("accumulate_grad_batches") or 1)
    run.devices = trainer.get("devices", run.devices)
    run.num_nodes = int(trainer.get("num_nodes") or 1)
    run.max_steps = int(trainer.get("max_steps") if trainer.get("max_steps") is not None else -1)
    return run


def tokenizer_facts(run: RunConfig) -> tuple[int | None, int, str]:
    """(vocabulary size or None, leading text positions without loss, how they were found).

    Builds the configured tokenizer when it is one of ours and can be built here (a HFTokenizer needs its
    file); otherwise counts the prompt with open_clip's BPE, which the caller must then say is an estimate.
    """
    from genlip_lit.data import tokenizer as tokenizers

    spec = run.tokenizer or {"class_path": "genlip_lit.data.tokenizer.OpenCLIPTokenizer"}
    class_path = spec.get("class_path", "") if isinstance(spec, dict) else str(spec)
    module, _, name = class_path.rpartition(".")
    tok, how = None, "the configured tokenizer"
    if module == "genlip_lit.data.tokenizer" and isinstance(getattr(tokenizers, name, None), type):
        try:
            tok = getattr(tokenizers, name)(**_init_args(spec))
            vocab = tok.vocab_size
        except (GenLIPUserError, ImportError):
            tok = None
    if tok is None:
        vocab, how = None, "open_clip's BPE (the configured tokenizer cannot be built here)"
        try:
            tok = tokenizers.OpenCLIPTokenizer()
        except ImportError:  # no open_clip either: BOS + one token per word or punctuation mark
            return None, 1 + len(re.findall(r"\w+|[^\w\s]", run.prompt or "")), "a word count of the prompt"
    ids, mask = tokenizers.CaptionEncoder(tok, run.prompt, run.max_text_len).encode("a")
    head = mask.index(True) if True in mask else len(ids)
    return vocab, head, how
