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
import re
import stat
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import PRESETS, GenLIPConfig

CHECKPOINT_NAME = "genlip.ckpt"
# the Hugging Face weights file name, taken before any other file in the directory (an import format names its
# own: ImportFormat.weights_names)
PREFERRED_WEIGHTS = ("model.safetensors",)
# config fields that describe how to run or train, not the function: never worth an override of their own
_NOT_ARCHITECTURE = {"loss_chunk_tokens", "grad_checkpointing", "compile_blocks"}


# Size caps, judged from `stat` before a byte is read (`genlip import --max-bytes` lifts both): a config file is a
# few KB, Qwen3's tokenizer.json 11 MB; a file far beyond that is not one, and reading it costs ~10x its size.
MAX_JSON_BYTES = 4 * 2**20
MAX_TOKENIZER_BYTES = 64 * 2**20
# Architecture caps, checked before anything is built: far above any released model (ViT-22B: depth 48, width
# 6144; Qwen3's vocabulary 151,669), far below what a hand-edited config.json could ask the meta device to build.
ARCH_CAPS = {"depth": 1024, "width": 65536, "num_heads": 1024, "ffn_hidden": 1 << 20, "vocab_size": 1 << 23,
             "text_width": 65536}


def check_size(path: str | os.PathLike, max_bytes: int, what: str) -> int:
    """The size of a regular file `path` if at most `max_bytes`; else one line naming it (nothing is read)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise GenLIPUserError(f"{path} not found") from None
    except OSError as err:
        raise GenLIPUserError(f"{path}: cannot read it ({err.strerror or err})") from None
    if not stat.S_ISREG(info.st_mode):
        raise GenLIPUserError(f"{path} is not a regular file")
    if info.st_size > max_bytes:
        raise GenLIPUserError(f"{path} has {info.st_size} bytes, over the {max_bytes}-byte cap for a {what} "
                              "(--max-bytes lifts it)")
    return info.st_size


def read_json(path: str | os.PathLike, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """A JSON object from a file no bigger than `max_bytes` (checked before it is read)."""
    check_size(path, max_bytes, "JSON config file")
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(max_bytes + 1))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GenLIPUserError(f"{path} is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise GenLIPUserError(f"{path} does not hold a JSON object")
    return data


def check_caps(cfg: GenLIPConfig, origin: str) -> None:
    """Refuse an architecture beyond ARCH_CAPS (one line naming the field) before anything is built."""
    for name, cap in ARCH_CAPS.items():
        value = getattr(cfg, name)
        if value is not None and value > cap:
            raise GenLIPUserError(f"{origin}: {name} {value} is beyond any GenLIP model (at most {cap}): "
                                  "not a real checkpoint config")


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


def _read_torch_file(file: Path, ema: bool, mmap: bool = False) -> dict[str, Tensor]:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True, mmap=mmap)
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


def _source_roots(directory: Path) -> tuple[str, ...]:
    """Where files read for SRC may lie: SRC itself; for a Hugging Face cache snapshot (…/snapshots/REV) also
    the cache's blobs/ folder, which its file links point to."""
    roots = [os.path.realpath(directory)]
    absolute = Path(os.path.abspath(directory))
    if absolute.parent.name == "snapshots":
        roots.append(os.path.realpath(absolute.parent.parent / "blobs"))
    return tuple(roots)


def _inside_source(file: Path, directory: Path, origin: str) -> Path:
    """`file` (in SRC) unless a symlink takes it outside SRC: then one line naming both."""
    from genlip_lit.ingest.safe_read import is_inside

    if not is_inside(str(file), _source_roots(directory)):
        raise GenLIPUserError(f"{origin}: {file} leads to {os.path.realpath(file)}, outside {directory}: the "
                              "weights must be files inside the checkpoint directory")
    return file


def _shard_path(directory: Path, name: object, index: Path) -> Path:
    """A shard named by the index: a plain relative path below SRC (no absolute name, no `..`, no link out)."""
    if (not isinstance(name, str) or not name or os.path.isabs(name) or name.startswith(("/", "\\"))
            or re.match(r"^[A-Za-z]:", name) or ".." in re.split(r"[/\\]", name)):
        raise GenLIPUserError(f"{index} names shard {name!r}: shards must be files inside {directory} "
                              "(no absolute path, no '..')")
    file = directory / name
    if not file.is_file():
        raise GenLIPUserError(f"{index} names shard {name}, which is not in {directory}")
    return _inside_source(file, directory, str(index))


def weight_files(src: str | os.PathLike, preferred: Iterable[str] = PREFERRED_WEIGHTS
                 ) -> tuple[list[Path], dict[str, Any] | None]:
    """The weights files of a checkpoint (SRC a directory or one weights file) and, for shards, the index's
    weight_map; every file checked to lie inside SRC. In a directory the first of the `preferred` names wins,
    else its one weights file. Nothing is read but the index."""
    path = Path(src).expanduser()
    if path.is_file():
        return [path], None
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise GenLIPUserError(f"{index} has no weight_map")
        names = sorted(set(weight_map.values()), key=str)
        return [_shard_path(path, name, index) for name in names], weight_map
    preferred = [path / n for n in preferred if (path / n).is_file()]
    files = preferred[:1] or sorted(path.glob("*.safetensors"))
    if not files:
        files = sorted(p for ext in ("*.pt", "*.pth", "*.bin") for p in path.glob(ext))
    if len(files) != 1:
        what = "no weights file" if not files else f"several weights files ({', '.join(f.name for f in files)})"
        raise GenLIPUserError(f"{path} holds {what}: name the file (SRC may be a weights file)")
    return [_inside_source(files[0], path, str(path))], None


def _check_listed(keys: Iterable[str], weight_map: dict[str, Any] | None, files: list[Path]) -> None:
    if weight_map is not None:
        unlisted = sorted(set(keys) - set(weight_map))
        if unlisted:
            raise GenLIPUserError(f"shards hold tensor {unlisted[0]!r}, which "
                                  f"{files[0].parent / 'model.safetensors.index.json'} does not list")


def load_state(src: str | os.PathLike, ema: bool = False, preferred: Iterable[str] = PREFERRED_WEIGHTS
               ) -> tuple[dict[str, Tensor], list[str]]:
    """All tensors of a checkpoint (single or sharded safetensors with an index, or a weights-only torch file)
    and the files read. SRC is a directory or one weights file (`preferred`: see weight_files)."""
    files, weight_map = weight_files(src, preferred)
    file = files[0]
    if weight_map is not None or file.suffix == ".safetensors":
        if ema:
            raise GenLIPUserError(f"{file} is a safetensors file: it holds no separate EMA weights")
        state = _read_safetensors(files)
        _check_listed(state, weight_map, files)
        return state, [str(f) for f in files]
    return _read_torch_file(file, ema), [str(file)]


def weight_shapes(src: str | os.PathLike, ema: bool = False, preferred: Iterable[str] = PREFERRED_WEIGHTS
                  ) -> dict[str, Tensor]:
    """The checkpoint's tensors as meta tensors (names and shapes, no data): from the safetensors headers
    alone, or a torch file opened memory-mapped. A converter run on them checks every name and shape before
    any weight is read or any module built."""
    from genlip_lit.encoders.export import safetensors_shapes

    files, weight_map = weight_files(src, preferred)
    if weight_map is None and files[0].suffix != ".safetensors":
        import zipfile

        state = _read_torch_file(files[0], ema, mmap=zipfile.is_zipfile(files[0]))  # (legacy files: no mmap)
        return {k: torch.empty(tuple(v.shape), dtype=v.dtype, device="meta") for k, v in state.items()}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        for key, shape in safetensors_shapes(str(file)).items():
            if key in shapes:
                raise GenLIPUserError(f"{file}: tensor {key!r} also appears in another shard")
            shapes[key] = shape
    _check_listed(shapes, weight_map, files)
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def stored_depth(shapes: Iterable[str], layer_pattern: str = r"(?:^|\.)layers\.(\d+)\.") -> int:
    """How many transformer layers the weights hold: distinct indices i that `layer_pattern` (group 1) finds in
    the names (by default `….layers.{i}.…`)."""
    found = {int(m.group(1)) for key in shapes for m in [re.search(layer_pattern, key)] if m}
    return len(found)


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
        """Remove a key that must hold the same tensor as another one (a module saved under two names)."""
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


def move_block(m: StateMapper, cfg: GenLIPConfig, src: str, dst: str, moved: dict[str, Tensor] | None = None
               ) -> None:
    """One transformer block from the layout both released implementations share (`layer_norm{1,2}`,
    `self_attn.{q,k,v,out}_proj` with the gate fused into q_proj's rows, `mlp.{gate_fc,fc1,fc2}` or
    `mlp.{fc1,fc2}`, `layer_scale{1,2}.lambda1`) to ours, `src` and `dst` the blocks' name prefixes.
    `moved` (optional) collects each source tensor by its key, for alias checks."""

    def move(theirs: str, ours: str) -> None:
        value = m.move(src + theirs, dst + ours)
        if moved is not None:
            moved[src + theirs] = value

    def params(bias: bool) -> tuple[str, ...]:
        return ("weight", "bias") if bias else ("weight",)

    for theirs, ours in (("layer_norm1", "norm1"), ("layer_norm2", "norm2")):
        for p in ("weight", "bias"):
            move(f"{theirs}.{p}", f"{ours}.{p}")
    a = cfg.attn_dim
    for p in params(cfg.qkv_bias):
        if cfg.gated_attn:  # rows [0, a) are the query, [a, 2a) the gate (q, gate = q_proj(x).chunk(2, -1))
            key = f"{src}self_attn.q_proj.{p}"
            fused = m.take(key)
            if moved is not None:
                moved[key] = fused
            if fused.shape[0] != 2 * a:
                raise GenLIPUserError(f"{m.origin}: {key!r} has shape {list(fused.shape)}, the gated "
                                      f"architecture needs {[2 * a, *fused.shape[1:]]}")
            m.put(f"{dst}attn.q_proj.{p}", fused[:a], key)
            m.put(f"{dst}attn.gate_proj.{p}", fused[a:], key)
        else:
            move(f"self_attn.q_proj.{p}", f"attn.q_proj.{p}")
        move(f"self_attn.k_proj.{p}", f"attn.k_proj.{p}")
        move(f"self_attn.v_proj.{p}", f"attn.v_proj.{p}")
    for p in params(cfg.out_bias):
        move(f"self_attn.out_proj.{p}", f"attn.o_proj.{p}")
    mlp = (("gate_fc", "fc1_g"), ("fc1", "fc1_x"), ("fc2", "fc2")) if cfg.ffn_type == "swiglu" else (
        ("fc1", "fc1"), ("fc2", "fc2"))
    for theirs, ours in mlp:
        for p in params(cfg.ffn_bias):
            move(f"mlp.{theirs}.{p}", f"mlp.{ours}.{p}")
    if cfg.layer_scale_init:
        move("layer_scale1.lambda1", "ls1.gamma")
        move("layer_scale2.lambda1", "ls2.gamma")


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
    from genlip_lit.checkpoints.integrity import SHA_KEY, weights_sha256

    checkpoint[SHA_KEY] = weights_sha256(checkpoint["state_dict"])  # loaders refuse flipped bytes, as for ours
    path = os.path.join(output, CHECKPOINT_NAME)
    torch.save(checkpoint, path)
    return path
