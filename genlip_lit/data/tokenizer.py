"""Tokenizer plug-ins and the caption text format (BOS, prompt, caption, EOS; or the released models' template).

Pick one from YAML, e.g. ``tokenizer: {class_path: genlip_lit.data.tokenizer.OpenCLIPTokenizer,
init_args: {compact_corpus: synthetic}}``. Everything runs offline: open_clip ships its BPE merges file,
and `HFTokenizer` reads a local `tokenizer.json`.

Compact mode keeps only the base tokens that occur in a corpus, renumbered densely, so a tiny CPU model does
not pay for a 49k- or 152k-row LM head. The corpus: "synthetic" (the embedded scenes' words), "world" (the rich
world's: data/world.py), a text file of
captions, a `genlip optimize` output directory (up to 100,000 of its train captions, evenly spread), or "data"
(`genlip fit` puts the training data_dir there). Words outside it become `<unk>` (counted in training as
`data/unknown_tokens`; `genlip fit` refuses a compact vocabulary that cannot spell its corpus:
data/caption_coverage.py). The kept base ids travel in `state_dict()`, so a checkpoint stays decodable after
the corpus is gone.
"""

from __future__ import annotations

import abc
import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from genlip_lit.errors import GenLIPUserError

log = logging.getLogger(__name__)

UNK_TEXT = "<unk>"
# Compact ids: these four first, then the kept base tokens in base-id order.
_COMPACT_PAD, _COMPACT_BOS, _COMPACT_EOS, _COMPACT_UNK = 0, 1, 2, 3
_NUM_COMPACT_SPECIALS = 4


class Tokenizer(abc.ABC):
    """Text <-> token ids. `encode` adds no BOS/EOS; `decode` drops BOS/EOS/pad ids."""

    vocab_size: int
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def unk_id(self) -> int | None:
        """The id `encode` gives text the vocabulary cannot spell; None when every text has a spelling (byte-level
        BPE). Counted per caption in training (`data/unknown_tokens`)."""
        return None

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without BOS/EOS."""

    @abc.abstractmethod
    def decode(self, ids: Sequence[int]) -> str:
        """Text of `ids`, skipping BOS/EOS/pad (generation output can be passed as is)."""

    def init_args(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this tokenizer (stored in checkpoints beside `state_dict`)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Small JSON-able state that makes a checkpoint self-contained."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        if state:
            raise GenLIPUserError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")


class _CompactableTokenizer(Tokenizer):
    """Shared compact-vocabulary logic over a base tokenizer given by four primitives.

    Subclasses implement `_base_encode`, `_base_decode`, `_base_vocab_size` and `_base_specials`
    (bos, eos, pad base ids). The compact vocabulary is built lazily on first use, so constructing a
    tokenizer is cheap and a checkpoint's `load_state_dict` can supply it instead of the corpus.
    """

    def __init__(self, compact_corpus: str | None) -> None:
        self.compact_corpus = compact_corpus
        self.num_unknown = 0  # unk ids `encode` returned (compact mode: base tokens outside the kept set too)
        self._kept: list[int] | None = None  # kept base ids (compact mode), sorted
        self._to_compact: dict[int, int] = {}
        self._corpus_note = ""  # what a vocabulary built from shards was read from (logged once)

    def init_args(self) -> dict[str, Any]:
        return {"compact_corpus": self.compact_corpus}

    # -- base tokenizer primitives ---------------------------------------------------------------
    @abc.abstractmethod
    def _base_encode(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def _base_decode(self, ids: list[int]) -> str: ...

    @property
    @abc.abstractmethod
    def _base_vocab_size(self) -> int: ...

    @property
    @abc.abstractmethod
    def _base_specials(self) -> tuple[int, int, int]: ...

    @property
    def _base_unk_id(self) -> int | None:
        """The base tokenizer's own unknown token, if it has one (WordPiece, WordLevel, some BPEs)."""
        return None

    # -- compact vocabulary ----------------------------------------------------------------------
    @property
    def is_compact(self) -> bool:
        return self.compact_corpus is not None or self._kept is not None

    def _corpus_texts(self) -> list[str]:
        """Texts whose tokens the compact vocabulary keeps."""
        corpus = self.compact_corpus
        assert corpus is not None
        if corpus in ("synthetic", "world"):  # the embedded scenes' words: data/synthetic.py's or data/world.py's
            from genlip_lit.data import synthetic, world

            caption_vocabulary = world.caption_vocabulary if corpus == "world" else synthetic.caption_vocabulary

            # Byte-level BPEs (Qwen, GPT-2) spell a word differently at sentence start, after a space and
            # before punctuation; encoding each word in those contexts covers every spelling a caption uses.
            texts = []
            for word in caption_vocabulary():
                texts += [word, f"{word}.", f"{word},", f"a {word}", f"a {word}.", f"a {word},"]
            return texts
        from genlip_lit.data import caption_coverage as coverage

        if corpus == coverage.DATA_CORPUS:
            raise GenLIPUserError(
                "compact_corpus 'data' stands for the training data's directory, which `genlip fit` fills in from "
                "data.init_args.data_dir; outside genlip fit pass that directory itself"
            )
        if coverage.is_remote(corpus) or os.path.isdir(corpus):  # shards on disk or in object storage
            if not coverage.is_shard_dir(corpus):
                raise GenLIPUserError(f"compact_corpus {corpus!r} is a directory without `genlip optimize` shards "
                                      "(train/index.json)")
            texts, total = coverage.shard_captions(corpus, coverage.VOCAB_CAPTIONS)
            self._corpus_note = f"{len(texts):,} of the {total:,} train captions of {corpus}"
            return texts
        if not os.path.isfile(corpus):
            raise GenLIPUserError(
                f"compact_corpus {corpus!r} is neither 'synthetic', 'world', 'data', a `genlip optimize` output directory nor "
                "an existing text file (one caption per line)"
            )
        with open(corpus, encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]

    def _ensure_compact(self) -> None:
        if self._kept is None and self.compact_corpus is not None:
            specials = {*self._base_specials, self._base_unk_id}  # the base unk maps to the compact one
            kept = {i for text in self._corpus_texts() for i in self._base_encode(text)} - specials
            self._set_kept(sorted(kept))
            if self._corpus_note:  # a corpus read from shards: say what the vocabulary is made of
                log.info("compact vocabulary: %d tokens (%d kept BPE tokens + 4 specials) from %s",
                         self.vocab_size, len(kept), self._corpus_note)

    def _set_kept(self, kept: list[int]) -> None:
        self._kept = [int(i) for i in kept]
        self._to_compact = {b: _NUM_COMPACT_SPECIALS + k for k, b in enumerate(self._kept)}

    # -- public API ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:  # type: ignore[override]
        self._ensure_compact()
        if self._kept is not None:
            return _NUM_COMPACT_SPECIALS + len(self._kept)
        return self._base_vocab_size

    @property
    def bos_id(self) -> int:  # type: ignore[override]
        return _COMPACT_BOS if self.is_compact else self._base_specials[0]

    @property
    def eos_id(self) -> int:  # type: ignore[override]
        return _COMPACT_EOS if self.is_compact else self._base_specials[1]

    @property
    def pad_id(self) -> int:  # type: ignore[override]
        return _COMPACT_PAD if self.is_compact else self._base_specials[2]

    @property
    def unk_id(self) -> int | None:
        """Compact mode: the id of base tokens outside the kept vocabulary (and of the base unknown token); full
        mode: the base tokenizer's unknown token, None for byte-level BPEs (open_clip's, Qwen's)."""
        return _COMPACT_UNK if self.is_compact else self._base_unk_id

    def encode(self, text: str) -> list[int]:
        ids = self._base_encode(text)
        self._ensure_compact()
        if self._kept is None:
            unk = self._base_unk_id
            if unk is not None:
                self.num_unknown += ids.count(unk)
            return ids
        base_unk = self._base_unk_id
        out = [_COMPACT_UNK if i == base_unk else self._to_compact.get(i, _COMPACT_UNK) for i in ids]
        self.num_unknown += out.count(_COMPACT_UNK)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        self._ensure_compact()
        if self._kept is None:
            skip = set(self._base_specials)
            n = self._base_vocab_size
            # ids past the tokenizer (a model's padded LM head) cannot be spelled: drop them
            return self._base_decode([i for i in ids if i not in skip and 0 <= i < n])
        # Decode runs of known tokens; each unknown (or out-of-range) id becomes a visible <unk>.
        pieces: list[str] = []
        run: list[int] = []
        for i in ids:
            if i in (_COMPACT_PAD, _COMPACT_BOS, _COMPACT_EOS):
                continue
            k = i - _NUM_COMPACT_SPECIALS
            if 0 <= k < len(self._kept):
                run.append(self._kept[k])
                continue
            if run:
                pieces.append(self._base_decode(run))
                run = []
            pieces.append(UNK_TEXT)
        if run:
            pieces.append(self._base_decode(run))
        return " ".join(p.strip() for p in pieces if p.strip())

    def state_dict(self) -> dict[str, Any]:
        self._ensure_compact()
        return {
            "type": type(self).__name__,
            "base_vocab_size": self._base_vocab_size,
            "compact_base_ids": None if self._kept is None else list(self._kept),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        kind = state.get("type", type(self).__name__)
        if kind != type(self).__name__:
            raise GenLIPUserError(
                f"tokenizer state is for {kind}, but this tokenizer is {type(self).__name__}"
            )
        base = state.get("base_vocab_size", self._base_vocab_size)
        if base != self._base_vocab_size:
            raise GenLIPUserError(
                f"tokenizer state expects a base vocabulary of {base} tokens, this tokenizer has "
                f"{self._base_vocab_size}: load the tokenizer the checkpoint was trained with"
            )
        kept = state.get("compact_base_ids")
        if kept is None:
            self._kept, self._to_compact, self.compact_corpus = None, {}, None
        else:
            self._set_kept(kept)


_PLAIN_ASCII = re.compile(r"[\x20-\x25\x27-\x7e\t\n\r]*")  # printable ASCII and whitespace, no "&"


class OpenCLIPTokenizer(_CompactableTokenizer):
    """open_clip's bundled CLIP BPE (49,408 tokens), lowercase, offline.

    Full mode: BOS = `<start_of_text>`, EOS = `<end_of_text>`, and pad = EOS (open_clip pads with id 0,
    which is the real token "!"; padding with EOS keeps decode lossless, and `text_mask` marks padding anyway).
    """

    def __init__(self, compact_corpus: str | None = None) -> None:
        super().__init__(compact_corpus)
        from open_clip.tokenizer import SimpleTokenizer

        self._tok = SimpleTokenizer()

    def _base_encode(self, text: str) -> list[int]:
        if not _PLAIN_ASCII.fullmatch(text):
            return list(self._tok.encode(text))
        # Plain printable ASCII without HTML entities: open_clip's ftfy + html.unescape pass cannot change it, and
        # was a third of the encoding time (in the data loader, per caption); its BPE step is reused as is.
        # Printable ASCII maps to itself under CLIP's byte encoder, so each regex token goes straight to BPE.
        tok = self._tok
        clean = " ".join(text.split()).lower()
        ids: list[int] = []
        for token in tok.pat.findall(clean):
            ids.extend(tok.encoder[piece] for piece in tok.bpe(token).split(" "))
        return ids

    def _base_decode(self, ids: list[int]) -> str:
        # SimpleTokenizer ends every word with "</w>" -> a space, also before punctuation and "'s".
        text = self._tok.decode(ids)
        text = re.sub(r"\s+([.,!?;:])", r"\1", text)
        text = re.sub(r"\s+'(s|t|re|ve|m|ll|d)\b", r"'\1", text)
        return re.sub(r"\s+", " ", text).strip()

    @property
    def _base_vocab_size(self) -> int:
        return len(self._tok.encoder)

    @property
    def _base_specials(self) -> tuple[int, int, int]:
        return self._tok.sot_token_id, self._tok.eot_token_id, self._tok.eot_token_id


_EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<end_of_text>", "[SEP]")
_BOS_CANDIDATES = ("<s>", "<bos>", "<|begin_of_text|>", "<start_of_text>", "<|startoftext|>", "[CLS]")
_PAD_CANDIDATES = ("<pad>", "<|pad|>", "[PAD]", "<|endoftext|>")


class HFTokenizer(_CompactableTokenizer):
    """Any Hugging Face `tokenizers` JSON file (e.g. Qwen3's tokenizer.json, as in the paper).

    Specials not given are looked up by common names; without a BOS token the EOS is reused as BOS (Qwen
    style), without a pad token the EOS pads. `bos_id` / `eos_id` / `pad_id` set ids outside the file's
    vocabulary (open_clip's GenLIP appends eos, pad, bos after cl100k_base); the vocabulary then extends to them.

    The tokenizer itself (canonical JSON) travels in `state_dict()`, so a checkpoint needs no file: a tokenizer
    whose `path` is gone is rebuilt from the checkpoint's state, and only one used without such state fails.
    """

    def __init__(
        self,
        path: str,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        compact_corpus: str | None = None,
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        super().__init__(compact_corpus)
        try:
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise GenLIPUserError(
                "HFTokenizer needs the `tokenizers` package: pip install genlip_lit[hf]"
            ) from exc
        self.path = path
        self._special_names = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token}
        self._special_ids = {"bos_id": bos_id, "eos_id": eos_id, "pad_id": pad_id}
        self._loaded = None  # the tokenizers.Tokenizer, read from `path` now or from a checkpoint's state later
        if os.path.isfile(path):
            try:
                self._set_tokenizer(tokenizers.Tokenizer.from_file(path))
            except GenLIPUserError:
                raise
            except Exception as exc:  # the Rust side raises plain Exception subclasses for bad JSON
                raise GenLIPUserError(f"cannot load tokenizer file {path!r}: {exc}") from exc

    def _set_tokenizer(self, tok: Any) -> None:
        vocab = tok.get_vocab(with_added_tokens=True)
        self._loaded = tok
        names, ids = self._special_names, self._special_ids
        eos = ids["eos_id"] if ids["eos_id"] is not None else self._special(
            vocab, names["eos_token"], _EOS_CANDIDATES, "eos_token")
        if eos is None:
            raise GenLIPUserError(
                f"tokenizer {self.path!r} has none of the usual end-of-text tokens {list(_EOS_CANDIDATES)}: "
                "pass eos_token explicitly"
            )
        bos = ids["bos_id"] if ids["bos_id"] is not None else self._special(
            vocab, names["bos_token"], _BOS_CANDIDATES, "bos_token")
        pad = ids["pad_id"] if ids["pad_id"] is not None else self._special(
            vocab, names["pad_token"], _PAD_CANDIDATES, "pad_token")
        self._specials = (eos if bos is None else bos, eos, eos if pad is None else pad)
        self._vocab_size = max(tok.get_vocab_size(with_added_tokens=True), max(self._specials) + 1)
        self._unk = _model_unk_id(tok, vocab)

    @property
    def _tok(self) -> Any:
        if self._loaded is None:
            raise GenLIPUserError(f"tokenizer file {self.path!r} does not exist (expected a tokenizers JSON file)")
        return self._loaded

    def init_args(self) -> dict[str, Any]:
        given_ids = {k: v for k, v in self._special_ids.items() if v is not None}
        return {"path": self.path, **self._special_names, **given_ids, **super().init_args()}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "tokenizer_json": self._tok.to_str()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        text = state.get("tokenizer_json")
        if text is not None:  # the checkpoint's own tokenizer wins over whatever `path` holds now
            import tokenizers

            self._set_tokenizer(tokenizers.Tokenizer.from_str(text))
        super().load_state_dict({k: v for k, v in state.items() if k != "tokenizer_json"})

    def _special(
        self, vocab: dict[str, int], given: str | None, candidates: Sequence[str], key: str
    ) -> int | None:
        if given is not None:
            if given not in vocab:
                raise GenLIPUserError(f"{key} {given!r} is not in the vocabulary of tokenizer {self.path!r}")
            return vocab[given]
        return next((vocab[c] for c in candidates if c in vocab), None)

    def _base_encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def _base_decode(self, ids: list[int]) -> str:
        n = self._tok.get_vocab_size(with_added_tokens=True)  # appended special ids are not in the file
        return self._tok.decode([i for i in ids if i < n], skip_special_tokens=True)

    @property
    def _base_vocab_size(self) -> int:
        self._tok  # noqa: B018 - a missing file is named here rather than as an AttributeError
        return self._vocab_size

    @property
    def _base_specials(self) -> tuple[int, int, int]:
        self._tok  # noqa: B018
        return self._specials

    @property
    def _base_unk_id(self) -> int | None:
        self._tok  # noqa: B018
        return self._unk


def _model_unk_id(tok: Any, vocab: dict[str, int]) -> int | None:
    """The unknown token of a `tokenizers.Tokenizer`'s model: `unk_token` (BPE, WordPiece, WordLevel) or `unk_id`
    (Unigram), read from its JSON form, which every model type has; None when it has none (byte-level BPE)."""
    model = json.loads(tok.to_str()).get("model") or {}
    token = model.get("unk_token")
    if isinstance(token, str) and token in vocab:
        return vocab[token]
    unk = model.get("unk_id")
    return unk if isinstance(unk, int) and not isinstance(unk, bool) else None


@dataclass(frozen=True)
class TextTemplate:
    """Where a sample's text starts and how it ends (what `CaptionEncoder` wraps around prompt and caption)."""

    bos: bool  # the text starts with the tokenizer's BOS (not a target)
    end_text: str | None  # appended after the caption, all its tokens targets; None = the tokenizer's EOS id
    description: str


TEXT_TEMPLATES = {
    "genlip": TextTemplate(True, None, "[BOS] prompt caption [EOS]"),
    # the released GenLIP models (authors' code: process_sample with no special tokens, then `<|im_end|>\n`)
    "official": TextTemplate(False, "<|im_end|>\n", "prompt caption <|im_end|> \\n (no BOS)"),
}


class CaptionEncoder:
    """The text format of one sample: by default `[BOS] + prompt + caption + [EOS]`, loss on caption and EOS only.

    It belongs to the model (the datamodule borrows it), because generation must start from the same
    `prompt_ids()` the model was trained on. `template` names a `TEXT_TEMPLATES` entry: "genlip" (ours, above)
    or "official", the released models' `prompt + caption + <|im_end|> + newline` without BOS (both end tokens are
    targets; generation stops at the first, `stop_id`). The model's hyper-parameters carry the name.
    """

    def __init__(self, tokenizer: Tokenizer, prompt: str | None = None, max_len: int = 64,
                 template: str = "genlip") -> None:
        if template not in TEXT_TEMPLATES:
            raise GenLIPUserError(f"unknown text template {template!r}; choose one of {sorted(TEXT_TEMPLATES)}")
        self.tokenizer = tokenizer
        self.prompt = prompt
        self.max_len = int(max_len)
        self.template = template
        self._template = TEXT_TEMPLATES[template]
        if not self._template.bos and not prompt:
            # the first token of a text is never a target (it would be predicted from the image, or in a packed
            # row from the previous sample): without BOS, a prompt must come first
            raise GenLIPUserError(f"text template {template!r} has no BOS: it needs a prompt")
        self.num_truncated = 0  # captions cut to fit max_len (counted per process)
        self.num_unknown = 0  # caption tokens the tokenizer mapped to its unknown token (per process, before any cut)
        self._prompt: list[int] | None = None
        self._end: list[int] | None = None

    def end_ids(self) -> list[int]:
        """The target tokens after the caption: [EOS], or the template's end text."""
        if self._end is None:
            text = self._template.end_text
            self._end = [self.tokenizer.eos_id] if text is None else self.tokenizer.encode(text)
            if not self._end:
                raise GenLIPUserError(f"the end text {text!r} of template {self.template!r} encodes to no token")
        return self._end

    @property
    def stop_id(self) -> int:
        """The token that ends generation: the first end token (EOS, or `<|im_end|>` for "official")."""
        return self.end_ids()[0]

    def _prompt_tokens(self) -> list[int]:
        if self._prompt is None:
            prompt = self.tokenizer.encode(self.prompt) if self.prompt else []
            head = int(self._template.bos) + len(prompt)
            # at least one caption token must fit between the prompt and the end tokens
            if head + 1 + len(self.end_ids()) > self.max_len:
                raise GenLIPUserError(
                    f"max_len={self.max_len} leaves no room for a caption after the {head}-token start "
                    f"(prompt {self.prompt!r}): raise max_len"
                )
            self._prompt = prompt
        return self._prompt

    def prompt_ids(self) -> list[int]:
        """`[BOS] + prompt` (or the prompt alone): what training sequences start with and generation starts from."""
        head = [self.tokenizer.bos_id] if self._template.bos else []
        return [*head, *self._prompt_tokens()]

    def encode(self, caption: str, with_end: bool = True) -> tuple[list[int], list[bool]]:
        """Ids and loss mask of one sample; a caption that does not fit is cut, keeping the end tokens.
        `with_end=False` leaves the end tokens out (a caption's start, for scoring templates)."""
        head = self.prompt_ids()
        end = self.end_ids() if with_end else []
        caption_ids = self.tokenizer.encode(caption)
        unk = self.tokenizer.unk_id
        if unk is not None:
            self.num_unknown += caption_ids.count(unk)
        room = self.max_len - len(head) - len(self.end_ids())
        if len(caption_ids) > room:
            caption_ids = caption_ids[:room]
            self.num_truncated += 1
        ids = head + caption_ids + end
        mask = [False] * len(head) + [True] * (len(caption_ids) + len(end))
        return ids, mask

    def collate_text(
        self, items: Sequence[tuple[Sequence[int], Sequence[bool]]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-pad encoded samples to the longest: (input_ids long, loss_mask bool, text_mask bool), [B, L]."""
        length = max((len(ids) for ids, _ in items), default=0)
        input_ids = torch.full((len(items), length), self.tokenizer.pad_id, dtype=torch.long)
        loss_mask = torch.zeros((len(items), length), dtype=torch.bool)
        text_mask = torch.zeros((len(items), length), dtype=torch.bool)
        for row, (ids, mask) in enumerate(items):
            n = len(ids)
            input_ids[row, :n] = torch.as_tensor(list(ids), dtype=torch.long)
            loss_mask[row, :n] = torch.as_tensor(list(mask), dtype=torch.bool)
            text_mask[row, :n] = True
        return input_ids, loss_mask, text_mask
