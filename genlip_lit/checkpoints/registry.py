"""The classes a checkpoint or an exported encoder may name: genlip_lit's own, and plug-ins registered in code.

    python -c "from genlip_lit.checkpoints import registry; print(registry.known('module'))"

A checkpoint names its module class (`genlip_module_class`, Lightning's `hyper_parameters._class_path`) and its
tokenizer class (`genlip_tokenizer.class_path`). Importing whatever a file names would let a downloaded file
run code (an import has side effects; `subprocess.Popen` as a "tokenizer" runs a command), so loaders resolve
these names here instead: only against this table, never through `importlib` on the file's string.

Your own LightningModule or Tokenizer subclass becomes loadable by registering it in your code, before loading:

    from genlip_lit.checkpoints.registry import register
    register(MyModule)                       # kind inferred: a genlip module or a Tokenizer subclass
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Iterable

from genlip_lit.errors import GenLIPUserError

# Built-in names -> (module, attribute). The strings here are ours (never a file's), so importing them is safe;
# they are imported only when a file names them, so `import genlip_lit.checkpoints.registry` stays light.
_BUILTIN: dict[str, dict[str, tuple[str, str]]] = {
    "module": {
        "genlip_lit.modules.genlip.GenLIPModule": ("genlip_lit.modules.genlip", "GenLIPModule"),
        "genlip_lit.modules.contrastive.ContrastiveModule": ("genlip_lit.modules.contrastive", "ContrastiveModule"),
        "genlip_lit.modules.captioner.CaptionerModule": ("genlip_lit.modules.captioner", "CaptionerModule"),
    },
    "tokenizer": {
        "genlip_lit.data.tokenizer.OpenCLIPTokenizer": ("genlip_lit.data.tokenizer", "OpenCLIPTokenizer"),
        "genlip_lit.data.tokenizer.HFTokenizer": ("genlip_lit.data.tokenizer", "HFTokenizer"),
    },
}
# Public aliases a config (and so Lightning's `_class_path`) may use for the same classes.
_ALIASES: dict[str, str] = {
    "genlip_lit.modules.GenLIPModule": "genlip_lit.modules.genlip.GenLIPModule",
    "genlip_lit.modules.ContrastiveModule": "genlip_lit.modules.contrastive.ContrastiveModule",
    "genlip_lit.modules.CaptionerModule": "genlip_lit.modules.captioner.CaptionerModule",
}
_PLUGINS: dict[str, dict[str, type]] = {"module": {}, "tokenizer": {}}
KINDS = tuple(_BUILTIN)


def class_path(cls: type) -> str:
    """The name a checkpoint stores for `cls` (module path + qualified name)."""
    return f"{cls.__module__}.{cls.__qualname__}"


# The base class of each kind, by name: checked along a class's MRO, so the registry imports neither
# genlip_lit.modules (which loads checkpoints through this registry) nor the tokenizers.
_BASES: dict[str, str] = {
    "module": "genlip_lit.modules.base.EncoderModule",
    "tokenizer": "genlip_lit.data.tokenizer.Tokenizer",
}


def _is_kind(cls: type, kind: str) -> bool:
    return any(class_path(c) == _BASES[kind] for c in cls.__mro__)


def register(cls: type, kind: str | None = None) -> type:
    """Make `cls` (a genlip module or a Tokenizer subclass) loadable from files that name it; returns `cls`,
    so it also works as a class decorator."""
    if not isinstance(cls, type):
        raise GenLIPUserError(f"register() takes a class, got {cls!r}")
    kinds = [kind] if kind is not None else [k for k in KINDS if _is_kind(cls, k)]
    if kind is not None and kind not in KINDS:
        raise GenLIPUserError(f"unknown registry kind {kind!r}; use one of {list(KINDS)}")
    if len(kinds) != 1 or not _is_kind(cls, kinds[0]):
        raise GenLIPUserError(
            f"{class_path(cls)} is neither an EncoderModule nor a Tokenizer subclass: nothing to register"
        )
    _PLUGINS[kinds[0]][class_path(cls)] = cls
    return cls


def known(kind: str) -> list[str]:
    """Every class path of this kind a file may name."""
    return sorted([*_BUILTIN[kind], *[a for a, t in _ALIASES.items() if t in _BUILTIN[kind]], *_PLUGINS[kind]])


def resolve(kind: str, name: object, source: str, allow: tuple[str, ...] = ()) -> type:
    """The registered class a file names as `name`; anything else is refused in one line naming `source`.

    `allow`: further class paths the caller trusts (e.g. the class the user's own config names); they are
    imported by their name only if the file's name equals one of them.
    """
    if not isinstance(name, str):
        raise GenLIPUserError(f"{source}: the {kind} class must be a class path string, got {type(name).__name__}")
    full = _ALIASES.get(name, name)
    if full in _PLUGINS[kind]:
        return _PLUGINS[kind][full]
    if full in _BUILTIN[kind]:
        module_name, attr = _BUILTIN[kind][full]
        return getattr(importlib.import_module(module_name), attr)
    if name in allow:
        module_name, _, attr = name.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise GenLIPUserError(f"{source}: cannot import {name!r} ({err})") from None
        if isinstance(cls, type) and _is_kind(cls, kind):
            return cls
    raise GenLIPUserError(
        f"{source} names {kind} class {name!r}, which is not a registered genlip_lit class (refused: loading it "
        f"could run code); register your own with genlip_lit.checkpoints.registry.register(cls)"
    )


# ------------------------------------------------------------------------------------------- checkpoint vetting
# Class paths a genlip checkpoint holds besides modules and tokenizers: the data module LightningCLI records in
# `datamodule_hyper_parameters._class_path`, and the function LightningCLI records as `_instantiator`. Only
# compared as names here: vetting imports nothing.
DATA_CLASSES = {"genlip_lit.data.datamodule.GenLIPDataModule", "genlip_lit.data.GenLIPDataModule"}
_INSTANTIATORS = {"lightning.pytorch.cli.instantiate_module"}
CLASS_KEYS = ("class_path", "_class_path", "genlip_module_class")
# `pkg.mod.Class`: a dotted name ending in a capitalised class name (file names such as `tokenizer.json` are not)
_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*\.[A-Z]\w*")
# where a bare string may be taken for a class path (LightningCLI parses hyper_parameters with jsonargparse; a
# tokenizer is rebuilt from its init_args); elsewhere (a compact vocabulary, file paths) strings are only data
_PARSED = ("hyper_parameters", "datamodule_hyper_parameters", "genlip_tokenizer.init_args")
_TENSOR_ENTRIES = {"state_dict", "optimizer_states", "state_dict_ema"}  # tensors and numbers only: not walked


def _importable_top_level(name: str) -> bool:
    """Whether the first component of a dotted string names a module Python could import (found, not imported:
    `find_spec` of a top-level name only asks the path finders)."""
    import importlib.util

    top = name.split(".", 1)[0]
    if top in sys.modules:
        return True
    try:
        return importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def vet_class_paths(ckpt: object, source: str, allow: Iterable[str] = ()) -> None:
    """Refuse a checkpoint that names, anywhere in it, a class or callable this registry does not know.

    One pass over every nested dict and list (hyper-parameters, the tokenizer spec, data module settings,
    callback states; not the tensors): a `class_path` / `_class_path` / `genlip_module_class` value must be a
    registered module or tokenizer class (or an alias), genlip's data module, or one of `allow` (the classes the
    user's own config names); `_instantiator` must be LightningCLI's; and in the hyper-parameters and tokenizer
    init_args any other string shaped like a dotted class name whose package exists (`thatmodule.Zen` as a bare
    tokenizer value, which jsonargparse would import as a class path) is refused too. Run before Lightning or
    jsonargparse sees the dict; imports nothing."""
    trusted = {*known("module"), *known("tokenizer"), *DATA_CLASSES, *allow}
    stack: list[tuple[str, object]] = [("", ckpt)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, dict):
            for key, value in node.items():
                if not where and key in _TENSOR_ENTRIES:
                    continue
                here = f"{where}.{key}" if where else str(key)
                if key in CLASS_KEYS or key == "_instantiator":
                    if not isinstance(value, str) or value not in (
                            _INSTANTIATORS if key == "_instantiator" else trusted):
                        _refuse(source, here, value)
                    continue
                stack.append((here, value))
        elif isinstance(node, (list, tuple)):
            stack.extend((f"{where}[{i}]", value) for i, value in enumerate(node))
        elif isinstance(node, str) and where.startswith(_PARSED) and len(node) < 300 and _DOTTED.fullmatch(node):
            if node not in trusted and _importable_top_level(node):
                _refuse(source, where, node)


def _refuse(source: str, where: str, name: object) -> None:
    shown = name if isinstance(name, str) else f"a {type(name).__name__}"
    raise GenLIPUserError(
        f"{source} names class {shown!r} at {where}, which is not a registered genlip_lit class (refused: "
        "loading it could run code); register your own with genlip_lit.checkpoints.registry.register(cls)"
    )
