"""Rebuild a trained module from a checkpoint without the CLI or the config files that made it.

    python -c "from genlip_lit.checkpoints.loading import load_checkpoint; print(load_checkpoint('last.ckpt')[0])"

A checkpoint written by a genlip module names its own class and carries its tokenizer (class, init args and
state), so nothing but the file is needed. The data module's hyper-parameters (image size, mean/std) come back
too, for preprocessing new images the way the model was trained.

Nothing in the file can run code: it is read with `torch.load(weights_only=True)` (checkpoints/integrity.py), the
class names it holds are resolved only against genlip_lit's registry (genlip_lit/checkpoints/registry.py), the module is
first built on the meta device so that sizes which do not match the stored tensors are refused before any
memory is allocated, and the weights must match their stored sha256 and be finite.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch

from genlip_lit.checkpoints.integrity import read_checkpoint, verify_weights
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import exists as storage_exists
from genlip_lit.storage.paths import find as storage_find
from genlip_lit.storage.paths import is_remote
from genlip_lit.storage.paths import isfile as storage_isfile

log = logging.getLogger(__name__)


def _init_kwargs(cls: type, hparams: dict[str, Any], path: str) -> dict[str, Any]:
    """The stored hyper-parameters the class accepts; an unknown one is an error naming it (not a TypeError)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(hparams) - set(params))
        if unknown:
            raise GenLIPUserError(f"{path}: hyper-parameters {unknown} are not arguments of {cls.__name__}")
    return hparams


def _mismatch(built: dict[str, Any], stored: dict[str, Any]) -> str:
    """What keeps `stored` weights from loading into a module whose state dict is `built` ("" when they fit):
    missing, unexpected and differently shaped names, the first few of each."""
    missing = sorted(set(built) - set(stored))
    unexpected = sorted(set(stored) - set(built))
    wrong = sorted(k for k in set(built) & set(stored)
                   if not isinstance(stored[k], torch.Tensor) or tuple(built[k].shape) != tuple(stored[k].shape))
    return "; ".join(
        f"{what}: {names[:4]}{' ...' if len(names) > 4 else ''}"
        for what, names in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
        if names
    )


def _check_shapes(built: dict[str, Any], stored: dict[str, Any], path: str) -> None:
    details = _mismatch(built, stored)
    if details:
        raise GenLIPUserError(f"{path}: the stored weights do not fit the architecture it describes ({details})")


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(module in eval mode on `device`, the data module's hyper-parameters or {})."""
    from genlip_lit.checkpoints.registry import resolve

    ckpt = read_checkpoint(path)
    if "genlip_module_class" not in ckpt:
        raise GenLIPUserError(f"{path} was not written by a genlip_lit module (no 'genlip_module_class' entry)")
    verify_weights(ckpt, path)
    cls = resolve("module", ckpt["genlip_module_class"], path)
    # LightningCLI adds private keys (_class_path, _instantiator): they are not init arguments.
    stored_hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(stored_hparams, dict):
        raise GenLIPUserError(f"{path}: hyper_parameters is a {type(stored_hparams).__name__}, not a dict")
    hparams = {k: v for k, v in stored_hparams.items() if not str(k).startswith("_")}
    if hparams.get("init_from"):
        hparams["init_from"] = None  # the weights below supersede the earlier stage's (which may be gone)
    spec = ckpt.get("genlip_tokenizer")
    if spec is not None:
        if not isinstance(spec, dict) or not isinstance(spec.get("init_args", {}), dict):
            raise GenLIPUserError(f"{path}: genlip_tokenizer is not a {{class_path, init_args, state}} dict")
        tok_cls = resolve("tokenizer", spec.get("class_path"), path)
        try:
            tokenizer = tok_cls(**_init_kwargs(tok_cls, dict(spec.get("init_args") or {}), path))
        except TypeError as err:
            raise GenLIPUserError(f"{path}: cannot rebuild its tokenizer {tok_cls.__name__} ({err})") from None
        tokenizer.load_state_dict(spec.get("state") or {})
        hparams["tokenizer"] = tokenizer
    kwargs = _init_kwargs(cls, hparams, path)
    try:
        # sizes first, on the meta device: a file declaring a huge width allocates nothing before it is refused
        with torch.device("meta"):
            skeleton = cls(**kwargs)
        _check_shapes(skeleton.state_dict(), ckpt["state_dict"], path)
        del skeleton
    except TypeError as err:
        raise GenLIPUserError(f"{path}: cannot rebuild {cls.__name__} from its hyper-parameters ({err})") from None
    except NotImplementedError:  # open_clip towers move themselves to a device while built: no meta pass
        log.debug("%s: no meta-device size check for %s", path, cls.__name__)
    module = cls(**kwargs)
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.eval().to(device)
    log.info("%s", checkpoint_line(path, ckpt))
    return module, dict(ckpt.get("datamodule_hyper_parameters") or {})


def check_resume_checkpoint(config: Any) -> None:
    """Vet a LightningCLI config's `ckpt_path` before Lightning reads it: loadable weights-only (one line naming
    the file otherwise) and naming a registered module class or the one the config itself names. Lightning is
    then told to load it weights-only too (its default, made explicit)."""
    from genlip_lit.checkpoints.registry import resolve

    subcommand = config.get("subcommand") if config is not None else None
    sub = config.get(subcommand) if subcommand else None
    path = sub.get("ckpt_path") if sub is not None else None
    if not path or not isinstance(path, (str, os.PathLike)) or not storage_isfile(str(path)):
        return  # none, or Lightning's "last"/"best"/"hpc" (Lightning resolves those; it loads weights-only)
    model = sub.get("model")
    own = model.get("class_path") if hasattr(model, "get") else None
    # every class path in the file, nested ones included (a tokenizer's), before jsonargparse parses them
    ckpt = read_checkpoint(str(path), mmap=True, allow=config_class_paths(sub))
    hparams = ckpt.get("hyper_parameters") or {}
    if not isinstance(hparams, dict):
        raise GenLIPUserError(f"{path}: hyper_parameters is a {type(hparams).__name__}, not a dict")
    class_path = hparams.get("_class_path")
    if class_path is not None:
        resolve("module", class_path, str(path), allow=(own,) if isinstance(own, str) else ())
    if "weights_only" in sub and sub.get("weights_only") is None:
        sub["weights_only"] = True
    log.info("resuming: %s", checkpoint_line(str(path), ckpt))


def config_class_paths(config: Any) -> set[str]:
    """Every `class_path` the user's own (parsed) config names: classes the user chose, so trusted by name."""
    found: set[str] = set()
    stack = [config.as_dict() if hasattr(config, "as_dict") else config]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            value = node.get("class_path")
            if isinstance(value, str):
                found.add(value)
            stack.extend(node.values())
        elif isinstance(node, (list, tuple)):
            stack.extend(node)
    return found


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or for a run directory the newest `last.ckpt` below it (e.g. runs/quickstart); local or
    in object storage (s3://bucket/runs/quickstart).

    A run directory holding several runs says which one it chose and how many others there are, so an
    accidental short run that became the newest is visible at once (name the file to pick another).
    """
    if is_remote(path):
        if storage_isfile(path):
            return path
        found = storage_find(path, "last.ckpt")
        if found:
            return max(found, key=lambda item: item[1])[0]
        if storage_exists(path):
            raise GenLIPUserError(f"no last.ckpt under {path!r}: train the earlier stage first, or name a .ckpt file")
        raise GenLIPUserError(f"checkpoint not found: {path!r}")
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        return expanded
    if os.path.isdir(expanded):
        found = [
            os.path.join(root, "last.ckpt") for root, _, files in os.walk(expanded) if "last.ckpt" in files
        ]
        if not found:
            raise GenLIPUserError(f"no last.ckpt under {path!r}: train the earlier stage first, or name a .ckpt file")
        chosen = max(found, key=os.path.getmtime)
        if len(found) > 1:
            log.info("%s holds %d runs with a last.ckpt; using the newest, %s (name a .ckpt file to choose "
                     "another)", path, len(found), os.path.relpath(chosen, expanded))
        return chosen
    raise GenLIPUserError(f"checkpoint not found: {path!r}")


def checkpoint_line(path: str, ckpt: dict[str, Any]) -> str:
    """`loaded FILE (step N, written DATE)`: what a command that took --ckpt actually read; the date is the
    file's modification time in UTC (a copy keeps it with `cp -p`)."""
    import datetime

    step = ckpt.get("global_step")
    steps = f"step {step}" if isinstance(step, int) else "step unknown"
    if is_remote(path):  # the object's own date is the store's upload time, not the training's
        return f"loaded {path} ({steps})"
    stamp = datetime.datetime.fromtimestamp(os.path.getmtime(path), tz=datetime.timezone.utc)
    return f"loaded {path} ({steps}, written {stamp:%Y-%m-%d %H:%M} UTC)"


def load_initial_weights(module: Any, path: str) -> str:
    """Copy the model weights of a checkpoint into `module` (same class and architecture); returns the file used.

    Weights only: a new stage starts its own optimizer, schedule and step count. Every parameter must match by
    name and shape, and the tokenizer must be the one the weights were trained with (the token ids index the
    embedding and the LM head); a mismatch is an error naming it, never a partial load.
    """
    from genlip_lit.checkpoints.registry import class_path

    file = resolve_checkpoint(path)
    tokenizer = getattr(module, "tokenizer", None)
    # the classes of the module being built are the user's choice: trusted by name, like their config's
    own = {class_path(type(module)), *([class_path(type(tokenizer))] if tokenizer is not None else [])}
    ckpt = read_checkpoint(file, allow=own)
    verify_weights(ckpt, file)
    state = ckpt["state_dict"]
    details = _mismatch(module.state_dict(), state)
    if details:
        raise GenLIPUserError(f"{file} does not fit this model ({details}): use the same arch and arch_overrides")
    spec = ckpt.get("genlip_tokenizer")
    if spec is not None and tokenizer is not None and spec["state"] != tokenizer.state_dict():
        raise GenLIPUserError(
            f"{file} was trained with another tokenizer vocabulary than this model's: use the same tokenizer "
            "settings (e.g. compact_corpus) as the run that wrote it"
        )
    module.load_state_dict(state)
    log.info("initialised weights: %s; optimizer and schedule start fresh", checkpoint_line(file, ckpt))
    return file
