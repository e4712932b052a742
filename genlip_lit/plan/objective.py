"""The objective a `genlip fit` config names, built on the meta device: what `genlip plan` traces.

    from genlip_lit.plan.objective import meta_objective

Any objective registered in checkpoints/registry.py is planned the same way, through the contract every
`EncoderModule` keeps (modules/base.py, "What `genlip plan` needs"): it is built from the config's arguments
under `torch.device("meta")` (no memory, no weights: its `weight_sources` are set to None), its `config` (a
GenLIPConfig) gives the patch grid, its `data_settings()["caption_encoder"]` the text format, and plan/trace.py
runs its own `training_step` on a meta batch. The tokenizer is the one class a config's arguments may name; it
is resolved through the registry too (a planner must not import whatever a file names) and built here. When it
cannot be built (a HFTokenizer whose file is elsewhere), open_clip's BPE stands in for the text format and
`--vocab-size` must give the vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genlip_lit.errors import GenLIPUserError
from genlip_lit.plan.run_config import RunConfig, _init_args

THE_CONFIGURED_TOKENIZER = "the configured tokenizer"


class SizedTokenizer:
    """A tokenizer that reports another vocabulary size (`--vocab-size`: a padded LM head, or the vocabulary of a
    tokenizer that cannot be built here); everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer: Any, vocab_size: int) -> None:
        self._tokenizer = tokenizer
        self.vocab_size = int(vocab_size)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)


@dataclass
class MetaObjective:
    """The objective built on the meta device, and the text facts the plan reads from it."""

    module: nn.Module  # an EncoderModule subclass, in training mode
    vocab_size: int
    head_tokens: int  # leading text positions without loss (BOS and prompt)
    max_text_len: int
    tokenizer_source: str  # how the text format was found (THE_CONFIGURED_TOKENIZER, or a stand-in)

    @property
    def config(self):
        """The GenLIPConfig of the objective's network."""
        return self.module.config


def tokenizer_class(spec: Any, source: str) -> type:
    """The tokenizer class `spec` ({class_path, init_args}, or a class path) names, resolved through the registry
    (an unregistered name is refused, never imported)."""
    from genlip_lit.checkpoints.registry import resolve

    return resolve("tokenizer", spec.get("class_path") if isinstance(spec, dict) else spec, source)


def _text_facts(module: nn.Module) -> tuple[int, int]:
    """(leading positions without loss, maximum text length) of the objective's caption format."""
    settings = module.data_settings() if callable(getattr(module, "data_settings", None)) else {}
    encoder = settings.get("caption_encoder")
    if encoder is None:
        raise GenLIPUserError(f"{type(module).__name__} names no caption format (data_settings()['caption_encoder']), "
                              "which the data module needs")
    ids, mask = encoder.encode("a")
    return (mask.index(True) if True in mask else len(ids)), int(encoder.max_len)


def _without_compilation(module: nn.Module) -> None:
    """Compiled blocks (`compile_blocks`) run eagerly in a trace: the same kernels and FLOPs, and torch.compile
    cannot trace meta tensors through the trace's interposers."""
    for sub in module.modules():
        if getattr(sub, "_compiled_call_impl", None) is not None:
            sub._compiled_call_impl = None


def _build(run: RunConfig, args: dict[str, Any], attn_impl: str) -> nn.Module:
    try:
        with torch.device("meta"):
            module = run.module_class(**args)
    except ImportError as err:  # a package the objective needs is not installed here
        raise GenLIPUserError(f"{run.module_class.__name__} cannot be built here: {err}") from None
    if getattr(module, "config", None) is None:
        raise GenLIPUserError(f"{run.module_class.__name__} has no GenLIP network config (module.config): genlip plan "
                              "traces objectives on GenLIP's image tower")
    _without_compilation(module)
    for sub in module.modules():  # the attention kernel the step runs (GenLIP networks and image towers)
        if callable(getattr(sub, "set_attn_impl", None)):
            sub.set_attn_impl(attn_impl)
    return module.train()


def meta_objective(run: RunConfig, vocab_size: int | None = None, attn_impl: str = "sdpa") -> MetaObjective:
    """Build `run`'s objective on the meta device; `vocab_size` (`--vocab-size`) replaces the tokenizer's."""
    args = dict(run.model)
    for name in getattr(run.module_class, "weight_sources", ("init_from",)):
        if name in args:
            args[name] = None  # weights change no cost: nothing is read
    how = THE_CONFIGURED_TOKENIZER
    takes_tokenizer = "tokenizer" in args
    if takes_tokenizer and args["tokenizer"] is not None and not hasattr(args["tokenizer"], "encode"):
        cls = tokenizer_class(args["tokenizer"], "model.init_args.tokenizer")
        try:
            args["tokenizer"] = cls(**_init_args(args["tokenizer"]))
            args["tokenizer"].vocab_size  # noqa: B018 - a tokenizer that loads lazily (HFTokenizer) reads its file here
        except (GenLIPUserError, ImportError, OSError):
            from genlip_lit.data.tokenizer import OpenCLIPTokenizer

            if vocab_size is None:
                raise GenLIPUserError("the configured tokenizer cannot be built here: give its size with "
                                      "--vocab-size N") from None
            try:
                args["tokenizer"] = OpenCLIPTokenizer()
            except ImportError as err:
                raise GenLIPUserError(f"the configured tokenizer cannot be built here, nor open_clip's BPE that stands "
                                      f"in for it ({err})") from None
            how = "open_clip's BPE (the configured tokenizer cannot be built here)"
    module = _build(run, args, attn_impl)
    if vocab_size is not None:
        if not takes_tokenizer:
            raise GenLIPUserError(f"--vocab-size: {run.module_class.__name__} takes no tokenizer to size")
        args["tokenizer"] = SizedTokenizer(module.tokenizer, vocab_size)
        module = _build(run, args, attn_impl)
    head, max_text_len = _text_facts(module)
    tokenizer = getattr(module, "tokenizer", None)
    vocab = int(getattr(tokenizer, "vocab_size", 0) or getattr(module.config, "vocab_size", 0))
    return MetaObjective(module, vocab, head, max_text_len, how)
