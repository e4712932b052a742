"""What every checkpoint conversion shares: reading a source directory safely, strict key mapping, and writing a
genlip checkpoint that every command accepts as `--ckpt`.

Reading never runs code: safetensors files through `safetensors`, anything else through
`torch.load(weights_only=True)`. Mapping is strict: `StateMapper` hands out each source tensor once, checks its
shape against the target model and names the first key that is missing, mis-shaped or left over.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import PRESETS, GenLIPConfig

CHECKPOINT_NAME = "genlip.ckpt"
# weights file names of the Hugging Face and open_clip hub layouts, taken before any other file in the directory
PREFERRED_WEIGHTS = ("model.safetensors", "open_clip_model.safetensors", "open_clip_pytorch_model.bin")
# config fields that describe how to run or train, not the function: never worth an override of their own
_NOT_ARCHITECTURE = {"loss_chunk_tokens", "grad_checkpointing", "compile_blocks"}


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise GenLIPUserError(f"{path} not found") from None
    except json.JSONDecodeError as err:
        raise GenLIPUserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise GenLIPUserError(f"{path} does not hold a JSON object")
    return data


def source_dir(src: str | os.PathLike) -> Path:
    """The directory of a source checkpoint (SRC itself, or the folder of a weights file)."""
    path = Path(src).expanduser()
    if not path.exists():
        raise GenLIPUserError(f"checkpoint source {src} does not exist")
    return path if path.is_dir() else path.parent


def _read_safetensors(files: Iterable[Path]) -> dict[str, Tensor]:
    from safetensors import safe_open

    state: dict[str, Tensor] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    if key in state:
                        raise GenLIPUserError(f"{file}: tensor {key!r} also appears in another shard")
                    state[key] = f.get_tensor(key)
        except GenLIPUserError:
            raise
        except Exception as err:  # a truncated or foreign file
            raise GenLIPUserError(f"{file} is not a readable safetensors file ({type(err).__name__}: {err})") from None
    return state


def _read_torch_file(file: Path, ema: bool) -> dict[str, Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # pickles that need code (or are not checkpoints) are refused, not run
        raise GenLIPUserError(f"{file} does not load with torch.load(weights_only=True) "
                              f"({type(err).__name__}): convert it to safetensors first") from None
    if isinstance(obj, dict) and ("state_dict" in obj or "state_dict_ema" in obj):
        key = "state_dict_ema" if ema else "state_dict"
        if key not in obj:
            raise GenLIPUserError(f"{file} has no {key!r} entry")
        obj = obj[key]
    elif ema:
        raise GenLIPUserError(f"{file} is a plain state dict: it holds no EMA weights")
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise GenLIPUserError(f"{file} does not hold a state dict of tensors")
    if obj and all(k.startswith("module.") for k in obj):  # saved from a DDP-wrapped model
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def load_state(src: str | os.PathLike, ema: bool = False) -> tuple[dict[str, Tensor], list[str]]:
    """All tensors of a checkpoint (single or sharded safetensors with an index, or a weights-only torch file)
    and the files read. SRC is a directory or one weights file."""
    path = Path(src).expanduser()
    if path.is_file():
        files = [path]
    else:
        index = path / "model.safetensors.index.json"
        if index.is_file():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise GenLIPUserError(f"{index} has no weight_map")
            files = [path / name for name in sorted(set(weight_map.values()))]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise GenLIPUserError(f"{index} names shard {missing[0]}, which is not in {path}")
            state = _read_safetensors(files)
            unlisted = sorted(set(state) - set(weight_map))
            if unlisted:
                raise GenLIPUserError(f"shards hold tensor {unlisted[0]!r}, which {index.name} does not list")
            return state, [str(f) for f in files]
        preferred = [path / n for n in PREFERRED_WEIGHTS if (path / n).is_file()]
        files = preferred[:1] or sorted(path.glob("*.safetensors"))
        if not files:
            files = sorted(p for ext in ("*.pt", "*.pth", "*.bin") for p in path.glob(ext))
        if len(files) != 1:
            what = "no weights file" if not files else f"several weights files ({', '.join(f.name for f in files)})"
            raise GenLIPUserError(f"{path} holds {what}: name the file (SRC may be a weights file)")
    file = files[0]
    if file.suffix == ".safetensors":
        if ema:
            raise GenLIPUserError(f"{file} is a safetensors file: it holds no separate EMA weights")
        return _read_safetensors(files), [str(file)]
    return _read_torch_file(file, ema), [str(file)]


class StateMapper:
    """Moves source tensors to target names, each source key used once; `finish` checks the target is complete
    and every source key was used, naming the first offender."""

    def __init__(self, source: dict[str, Tensor], expected: dict[str, tuple[int, ...]], origin: str) -> None:
        self.source = dict(source)
        self.expected = expected  # target name -> shape
        self.origin = origin
        self.out: dict[str, Tensor] = {}
        self._from: dict[str, str] = {}  # target name -> source key, for messages

    def take(self, key: str) -> Tensor:
        if key not in self.source:
            raise GenLIPUserError(f"{self.origin}: missing tensor {key!r}")
        return self.source.pop(key)

    def drop_alias(self, alias: str, of: str, original: Tensor) -> None:
        """Remove a key that must hold the same tensor as another one (open_clip's `visual.*` views)."""
        if alias not in self.source:
            return
        value = self.source.pop(alias)
        same_shape = tuple(value.shape) == tuple(original.shape)
        if not same_shape or (value.device.type != "meta" and not torch.equal(value, original)):
            raise GenLIPUserError(f"{self.origin}: {alias!r} should equal {of!r} but differs")

    def put(self, target: str, value: Tensor, source_key: str) -> None:
        want = self.expected.get(target)
        if want is None:
            raise GenLIPUserError(f"{self.origin}: {source_key!r} has no counterpart in this architecture")
        if tuple(value.shape) != tuple(want):
            raise GenLIPUserError(f"{self.origin}: {source_key!r} has shape {list(value.shape)}, the architecture "
                                  f"needs {list(want)}")
        self.out[target] = value
        self._from[target] = source_key

    def move(self, source_key: str, target: str, transform: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        value = self.take(source_key)
        self.put(target, transform(value) if transform else value, source_key)
        return value

    def finish(self) -> dict[str, Tensor]:
        if self.source:
            raise GenLIPUserError(f"{self.origin}: unknown key {sorted(self.source)[0]!r} "
                                  f"({len(self.source)} unmapped)")
        missing = sorted(set(self.expected) - set(self.out))
        if missing:
            raise GenLIPUserError(f"{self.origin}: nothing maps to {missing[0]!r} ({len(missing)} parameters)")
        return self.out


def expected_shapes(cfg: GenLIPConfig) -> dict[str, tuple[int, ...]]:
    """Names and shapes of a GenLIP state dict under `cfg`, built on the meta device (no memory, no init cost)."""
    from genlip_lit.models.transformer import GenLIP

    with torch.device("meta"):
        model = GenLIP(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_config_keys(config: dict[str, Any], handled: Iterable[str], origin: str,
                      ignore: Iterable[str] = ()) -> None:
    """Refuse config keys this converter does not know: each may be an architecture option we lack."""
    unknown = sorted(set(config) - set(handled) - set(ignore))
    if unknown:
        raise GenLIPUserError(f"{origin}: unknown config key {unknown[0]!r} (if it does not change the "
                              f"architecture, pass --ignore-config-key {unknown[0]})")


def preset_and_overrides(cfg: GenLIPConfig) -> tuple[str, dict[str, Any]]:
    """The preset closest to `cfg` and the fields that differ from it (vocab_size always): what a
    GenLIPModule's `arch` / `arch_overrides` hyper-parameters need to rebuild exactly `cfg`."""
    ours = dataclasses.asdict(cfg)

    def differing(name: str) -> dict[str, Any]:
        base = dataclasses.asdict(GenLIPConfig.from_name(name, vocab_size=cfg.vocab_size))
        return {k: v for k, v in ours.items() if base[k] != v and k not in _NOT_ARCHITECTURE}

    name = min(PRESETS, key=lambda n: len(differing(n)))  # dict order breaks ties: earlier presets win
    overrides = {k: (list(v) if isinstance(v, tuple) else v) for k, v in differing(name).items()}
    return name, {**overrides, "vocab_size": cfg.vocab_size}


def write_checkpoint(module: Any, output: str | os.PathLike, data_hparams: dict[str, Any],
                     provenance: dict[str, Any]) -> str:
    """Save `module` as the checkpoint our LightningModules write (weights, hyper-parameters, module class,
    tokenizer with its state, data module hyper-parameters), loadable with torch.load(weights_only=True)."""
    import lightning

    os.makedirs(output, exist_ok=True)
    checkpoint: dict[str, Any] = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {k: v.detach().contiguous() for k, v in module.state_dict().items()},
        "hyper_parameters": {k: v for k, v in dict(module.hparams).items()},
        "datamodule_hyper_parameters": dict(data_hparams),
        "genlip_import": provenance,
    }
    module.save_self_description(checkpoint)
    from genlip_lit.integrity import SHA_KEY, weights_sha256

    checkpoint[SHA_KEY] = weights_sha256(checkpoint["state_dict"])  # loaders refuse flipped bytes, as for ours
    path = os.path.join(output, CHECKPOINT_NAME)
    torch.save(checkpoint, path)
    return path
