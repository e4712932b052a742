"""Rebuild a trained module from a checkpoint without the CLI or the config files that made it.

    python -c "from genlip_lit.modules.loading import load_checkpoint; print(load_checkpoint('last.ckpt')[0])"

A checkpoint written by a genlip module names its own class and carries its tokenizer (class, init args and
state), so nothing but the file is needed. The data module's hyper-parameters (image size, mean/std) come back
too, for preprocessing new images the way the model was trained.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

import torch

from genlip_lit.errors import GenLIPUserError


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
