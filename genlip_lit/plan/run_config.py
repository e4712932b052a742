"""What `genlip plan` reads from the YAML files `genlip fit` takes: model, data and trainer settings, composed.

    genlip plan --config experiments/stage1_corpus.yaml --config experiments/scale/fsdp2.yaml

Several `--config` files compose the way LightningCLI composes them (nested keys merge, later files win, a new
`class_path` drops the old `init_args`), and `--key.sub value` overrides apply last. Every value the files leave
out is the default of the class that would receive it, read from that class's own signature: the objective
`model.class_path` names (resolved through checkpoints/registry.py, so a registered plug-in objective is read like
a built-in one and nothing a file names is imported), GenLIPDataModule and Lightning's Trainer. No default is
written here, so a default changed in a class changes the plan with it.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass, field
from typing import Any

import yaml

from genlip_lit.errors import GenLIPUserError


@dataclass
class RunConfig:
    """A run's settings: every argument of its objective, data module and trainer (the config's, else the
    class's default), and the class of the objective."""

    module_class: type
    model: dict[str, Any]  # the objective's __init__ arguments (its own and those its **kwargs reach)
    data: dict[str, Any]  # GenLIPDataModule's
    trainer: dict[str, Any]  # Lightning Trainer's, as far as a config sets or planning reads them
    sources: list[str] = field(default_factory=list)

    # what the plan reads, by name
    @property
    def arch(self) -> str:
        """The objective's preset (its `arch` argument), or its class name when it takes none."""
        return str(self.model.get("arch", self.module_class.__name__))

    @property
    def arch_overrides(self) -> dict[str, Any]:
        return dict(self.model.get("arch_overrides") or {})

    @property
    def resolution(self) -> str:
        return str(self.data["resolution"])

    @property
    def image_size(self) -> int:
        return int(self.data["image_size"])

    @property
    def batch_size(self) -> int:
        """Samples per GPU per forward (the micro-batch)."""
        return int(self.data["batch_size"])

    @property
    def min_patches(self) -> int:
        return int(self.data["min_patches"])

    @property
    def max_patches(self) -> int:
        return int(self.data["max_patches"])

    @property
    def max_tokens(self) -> int:
        return int(self.data["max_tokens"])

    @property
    def pad_to_multiple(self) -> int:
        return int(self.data["pad_to_multiple"])

    @property
    def precision(self) -> str:
        # Trainer(precision=None) is Lightning's full precision, which it names "32-true"
        return str(self.trainer["precision"] or "32-true")

    @property
    def strategy(self) -> Any:
        return self.trainer["strategy"]

    @property
    def accumulate(self) -> int:
        return int(self.trainer["accumulate_grad_batches"] or 1)

    @property
    def devices(self) -> Any:
        return self.trainer["devices"]

    @property
    def num_nodes(self) -> int:
        return int(self.trainer["num_nodes"] or 1)

    @property
    def max_steps(self) -> int:
        steps = self.trainer["max_steps"]
        return int(steps) if steps is not None else -1

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
        if "init_args" in node:
            return dict(node["init_args"] or {})
        return {k: v for k, v in node.items() if k != "class_path"}
    return {}


def signature_defaults(cls: type, stop: type | None = None) -> dict[str, Any]:
    """Every argument `cls(...)` accepts -> its default (`inspect.Parameter.empty` when required): the class's own
    `__init__`, then, while an `__init__` passes `**kwargs` on, those of its bases (GenLIPModule's `arch`, ...
    then EncoderModule's `lr`, ...), stopping after `stop`'s."""
    out: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        passes_on = False
        for name, param in list(inspect.signature(init).parameters.items())[1:]:  # [0] is self
            if param.kind is param.VAR_KEYWORD:
                passes_on = True
            elif param.kind is not param.VAR_POSITIONAL:
                out.setdefault(name, param.default)
        if not passes_on or klass is stop:
            break
    return out


def filled(cls: type, given: dict[str, Any], section: str, stop: type | None = None) -> dict[str, Any]:
    """`given` (a config section's init_args) over `cls`'s signature defaults; unknown or missing keys refused."""
    defaults = signature_defaults(cls, stop)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise GenLIPUserError(f"{section}: {cls.__name__} takes no argument {unknown[0]!r}")
    out = {**defaults, **given}
    missing = [name for name, value in out.items() if value is inspect.Parameter.empty]
    if missing:
        raise GenLIPUserError(f"{section}.{missing[0]} is required by {cls.__name__}")
    return out


def _module_class(model: Any, source: str) -> type:
    from genlip_lit.checkpoints.registry import resolve

    if not isinstance(model, dict) or "class_path" not in model:
        raise GenLIPUserError(f"{source}: set model.class_path (the objective to plan), as `genlip fit` needs it")
    return resolve("module", model["class_path"], f"model.class_path in {source}")


def _data_class(data: Any, source: str) -> type:
    from genlip_lit.checkpoints.registry import DATA_CLASSES
    from genlip_lit.data.datamodule import GenLIPDataModule

    name = data.get("class_path") if isinstance(data, dict) else None
    if name is not None and name not in DATA_CLASSES:
        raise GenLIPUserError(f"{source}: genlip plan reads GenLIPDataModule's settings; data.class_path is {name!r}")
    return GenLIPDataModule


def read_run_config(paths: list[str], overrides: list[tuple[str, str]] | None = None) -> RunConfig:
    """Compose `paths` (later wins), apply `overrides`, and fill what they leave out from the classes' defaults."""
    raw: dict[str, Any] = {}
    for path in paths:
        raw = merge(raw, load_yaml(path))
    for dotted, value in overrides or []:
        raw = apply_override(raw, dotted, value)
    return run_config_of(raw, list(paths))


def run_config_of(raw: dict[str, Any], sources: list[str] | None = None) -> RunConfig:
    """The RunConfig of one composed config (`{model: {class_path, init_args}, data: ..., trainer: ...}`)."""
    from lightning.pytorch import Trainer

    from genlip_lit.modules.base import EncoderModule

    source = " + ".join(sources or []) or "the config"
    module_class = _module_class(raw.get("model"), source)
    model = filled(module_class, _init_args(raw.get("model")), "model.init_args", stop=EncoderModule)
    data = filled(_data_class(raw.get("data"), source), _init_args(raw.get("data")), "data.init_args")
    trainer_given = raw.get("trainer") or {}
    if not isinstance(trainer_given, dict):
        raise GenLIPUserError(f"{source}: trainer must be a mapping")
    trainer = filled(Trainer, trainer_given, "trainer")
    run = RunConfig(module_class, model, data, trainer, list(sources or []))
    if run.resolution not in ("fixed", "native"):
        raise GenLIPUserError(f"data.resolution must be 'fixed' or 'native', got {run.resolution!r}")
    if run.resolution == "native" and not getattr(module_class, "trains_packed", False):
        from genlip_lit.modules.base import packed_refusal

        raise GenLIPUserError(f"{source}: {packed_refusal(module_class)}")  # as fit would say it
    if run.batch_size < 1:
        raise GenLIPUserError(f"data.batch_size must be >= 1, got {run.batch_size}")
    return run
