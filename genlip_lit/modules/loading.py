"""Rebuild a trained module from a checkpoint without the CLI or the config files that made it.

    python -c "from genlip_lit.modules.loading import load_checkpoint; print(load_checkpoint('last.ckpt')[0])"

A checkpoint written by a genlip module names its own class and carries its tokenizer (class, init args and
state), so nothing but the file is needed. The data module's hyper-parameters (image size, mean/std) come back
too, for preprocessing new images the way the model was trained.
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

import torch

from genlip_lit.errors import GenLIPUserError

log = logging.getLogger(__name__)


def import_class(class_path: str) -> type:
    module_name, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as err:
        raise GenLIPUserError(f"cannot import {class_path!r} named in the checkpoint ({err})") from None


def load_checkpoint(path: str, device: str | torch.device = "cpu") -> tuple[Any, dict[str, Any]]:
    """(module in eval mode on `device`, the data module's hyper-parameters or {})."""
    if not os.path.isfile(path):
        raise GenLIPUserError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated or foreign file: say which one
        raise GenLIPUserError(f"{path} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    if "genlip_module_class" not in ckpt:
        raise GenLIPUserError(f"{path} was not written by a genlip_lit module (no 'genlip_module_class' entry)")
    cls = import_class(ckpt["genlip_module_class"])
    # LightningCLI adds private keys (_class_path, _instantiator): they are not init arguments.
    hparams = {k: v for k, v in ckpt.get("hyper_parameters", {}).items() if not k.startswith("_")}
    if hparams.get("init_from"):
        hparams["init_from"] = None  # the weights below supersede the earlier stage's (which may be gone)
    spec = ckpt.get("genlip_tokenizer")
    if spec is not None:
        tokenizer = import_class(spec["class_path"])(**spec["init_args"])
        tokenizer.load_state_dict(spec["state"])
        hparams["tokenizer"] = tokenizer
    module = cls(**hparams)
    module.load_state_dict(ckpt["state_dict"])
    module.on_load_checkpoint(ckpt)
    module.eval().to(device)
    return module, dict(ckpt.get("datamodule_hyper_parameters", {}))


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or for a run directory the newest `last.ckpt` below it (e.g. runs/quickstart)."""
    expanded = os.path.expanduser(path)
    if os.path.isfile(expanded):
        return expanded
    if os.path.isdir(expanded):
        found = [
            os.path.join(root, "last.ckpt") for root, _, files in os.walk(expanded) if "last.ckpt" in files
        ]
        if found:
            return max(found, key=os.path.getmtime)
        raise GenLIPUserError(f"no last.ckpt under {path!r}: train the earlier stage first, or name a .ckpt file")
    raise GenLIPUserError(f"checkpoint not found: {path!r}")


def load_initial_weights(module: Any, path: str) -> str:
    """Copy the model weights of a checkpoint into `module` (same class and architecture); returns the file used.

    Weights only: a new stage starts its own optimizer, schedule and step count. Every parameter must match by
    name and shape, and the tokenizer must be the one the weights were trained with (the token ids index the
    embedding and the LM head); a mismatch is an error naming it, never a partial load.
    """
    file = resolve_checkpoint(path)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as err:
        raise GenLIPUserError(f"{file} is not a readable checkpoint ({type(err).__name__}: {err})") from None
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise GenLIPUserError(f"{file} holds no state_dict")
    ours = module.state_dict()
    missing = sorted(set(ours) - set(state))
    unexpected = sorted(set(state) - set(ours))
    wrong = sorted(k for k in set(ours) & set(state) if tuple(ours[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        details = "; ".join(
            f"{what}: {names[:4]}{' ...' if len(names) > 4 else ''}"
            for what, names in (("missing", missing), ("unexpected", unexpected), ("shape differs", wrong))
            if names
        )
        raise GenLIPUserError(f"{file} does not fit this model ({details}): use the same arch and arch_overrides")
    spec = ckpt.get("genlip_tokenizer")
    tokenizer = getattr(module, "tokenizer", None)
    if spec is not None and tokenizer is not None and spec["state"] != tokenizer.state_dict():
        raise GenLIPUserError(
            f"{file} was trained with another tokenizer vocabulary than this model's: use the same tokenizer "
            "settings (e.g. compact_corpus) as the run that wrote it"
        )
    module.load_state_dict(state)
    step = ckpt.get("global_step")
    log.info("initialised weights from %s (step %s); optimizer and schedule start fresh", file, step)
    return file
