"""The import formats `genlip import` knows: one interface, one registry, filled by the format modules themselves.

An import format is ONE module in genlip_lit/convert/ holding a subclass of `ImportFormat` decorated with
`@register_format`; `formats()` imports every module of this package once (so a new file is found with no list
to edit) and returns what registered. Code outside the package (a plug-in, a test) registers its own subclass
the same way before it calls `genlip import` (`genlip_lit.commands.import_checkpoint.main` or
`import_checkpoint`): detection, `--format`'s choices and the help text all come from `formats()`.
Every module here is imported whenever `genlip import` runs (even for --help): a format that needs an optional
package imports it inside its methods, so one missing extra never takes the other formats down.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from torch import Tensor

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import GenLIPConfig

# the GenLIPModule hyper-parameters an ImportFormat.text() gives: how the weights were trained to read text
TEXT_SETTINGS = ("prompt", "text_template", "max_text_len", "caption_max_new_tokens")


class ImportFormat(ABC):
    """How one implementation stores a GenLIP model, and how it becomes ours.

    Class attributes say what the command prints and looks for; the methods read the implementation's config
    (a JSON object) and weights. Every method refuses what it cannot map with a `GenLIPUserError` naming it."""

    name: ClassVar[str]  # the --format value, and `format` in the checkpoint's provenance
    description: ClassVar[str]  # a few words for `genlip import --help`: whose checkpoints these are
    # what this format adds to an option's help, by option ("tokenizer", "ema"): "needs one for cl100k_base"
    option_notes: ClassVar[dict[str, str]] = {}
    detected_by: ClassVar[str]  # what detection looks for, for the refusal when nothing matches
    tokenizer_hint: ClassVar[str]  # where a user finds the tokenizer file when SRC has none
    config_names: ClassVar[tuple[str, ...]] = ("config.json",)  # config files in SRC, the first found is read
    weights_names: ClassVar[tuple[str, ...]] = ("model.safetensors",)  # taken before any other weights file
    # where a weight name holds its transformer layer's index: the stored depth is checked against the config's
    # before the mapping runs, for a message naming both
    layer_pattern: ClassVar[str] = r"(?:^|\.)layers\.(\d+)\."

    @abstractmethod
    def detect(self, config: dict[str, Any], directory: Path) -> bool:
        """Whether `config` (read from SRC = `directory`) is one of this format's. Cheap: no weight is read."""

    @abstractmethod
    def model_config(self, config: dict[str, Any], origin: str, ignore: tuple[str, ...] = ()) -> GenLIPConfig:
        """The architecture; config keys this format does not know are refused unless listed in `ignore`."""

    @abstractmethod
    def text(self, config: dict[str, Any]) -> dict[str, Any]:
        """The GenLIPModule text settings the weights were trained with: exactly the keys of TEXT_SETTINGS."""

    def special_ids(self, config: dict[str, Any]) -> dict[str, int]:
        """Special token ids the tokenizer file does not name itself (HFTokenizer's eos_id / pad_id / bos_id)."""
        return {}

    def tokenizer_file(self, directory: Path) -> Path:
        """The tokenizers JSON file shipped with the weights (it may not exist: the user then passes one)."""
        return directory / "tokenizer.json"

    @abstractmethod
    def preprocessing(self, config: dict[str, Any], directory: Path) -> dict[str, Any]:
        """image_size, mean and std the encoder was trained with (from `config` or files in `directory`)."""

    @abstractmethod
    def convert(self, state: dict[str, Tensor], cfg: GenLIPConfig, origin: str) -> dict[str, Tensor]:
        """Their state dict -> a GenLIP state dict under `cfg`, strict both ways (see common.StateMapper).
        Also called on meta tensors (names and shapes only) before any weight is read."""


_REGISTRY: dict[str, ImportFormat] = {}
_discovered = False
F = TypeVar("F", bound=type[ImportFormat])


def register_format(cls: F) -> F:
    """Class decorator: make `cls` (an ImportFormat) one of `genlip import`'s formats, under `cls.name`."""
    if not (isinstance(cls, type) and issubclass(cls, ImportFormat)):
        raise TypeError(f"{cls!r} is not an ImportFormat subclass")
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(f"{cls.__name__}.name must be an identifier (it is a --format value), got {name!r}")
    known = _REGISTRY.get(name)
    where = (cls.__module__, cls.__qualname__)  # the same class again (its module reloaded) replaces itself
    if known is not None and (type(known).__module__, type(known).__qualname__) != where:
        raise TypeError(f"import format {name!r} is registered already ({type(known).__module__}."
                        f"{type(known).__qualname__})")
    _REGISTRY[name] = cls()
    return cls


def formats() -> dict[str, ImportFormat]:
    """Every registered format by name: the built-in modules of this package first (in file-name order), then
    those registered from outside."""
    global _discovered
    if not _discovered:
        for module in sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)])):
            importlib.import_module(f"{__package__}.{module}")  # a format module registers itself on import
        _discovered = True
    return dict(_REGISTRY)


def get_format(name: str) -> ImportFormat:
    known = formats()
    if name not in known:
        raise GenLIPUserError(f"--format must be one of {tuple(known)}, got {name!r}")
    return known[name]


def detect_format(config: dict[str, Any], directory: Path, origin: str, chosen: ImportFormat | None = None
                  ) -> ImportFormat:
    """The one registered format that claims `config`; none or several: one line asking for --format.
    With `chosen` (--format): that format, unless `config` is plainly another format's (then one line naming it)."""
    found = [fmt for fmt in formats().values() if fmt.detect(config, directory)]
    if chosen is not None:
        if found and chosen not in found:
            raise GenLIPUserError(f"{origin} is {found[0].detected_by}, which --format {chosen.name} does not "
                                  f"read: pass --format {found[0].name}, or leave --format out")
        return chosen
    if not found:
        what = [fmt.detected_by for fmt in formats().values()]
        says = f"is neither {' nor '.join(what)}" if len(what) > 1 else f"is not {''.join(what) or 'a known format'}"
        raise GenLIPUserError(f"{origin} {says}: pass --format")
    if len(found) > 1:
        raise GenLIPUserError(f"{origin} matches several import formats ({', '.join(f.name for f in found)}): "
                              "pass --format")
    return found[0]


def config_names(fmt: ImportFormat | None = None) -> tuple[str, ...]:
    """The config file names to look for in SRC: `fmt`'s, or every registered format's (in registry order)."""
    names = fmt.config_names if fmt is not None else [n for f in formats().values() for n in f.config_names]
    return tuple(dict.fromkeys(names))


def option_notes(option: str) -> list[str]:
    """`NAME NOTE` for each registered format with a note on `option` (see ImportFormat.option_notes)."""
    return [f"{name} {fmt.option_notes[option]}" for name, fmt in formats().items() if option in fmt.option_notes]
