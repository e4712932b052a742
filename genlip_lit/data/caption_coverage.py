"""Does a tokenizer spell a corpus's captions? Captions read cheaply from `genlip optimize` shards, and the check
`genlip fit` runs before it trains a compact vocabulary on them.

A compact vocabulary (`compact_corpus: synthetic`: the ~60 BPE tokens of the embedded scenes) turns every word
outside it into `<unk>`. Trained on a real corpus, "a black dog runs on a beach" would become "a black dog <unk>
on a <unk>" with no error: `GenLIPDataModule.setup("fit")` samples `SAMPLE_CAPTIONS` captions spread over each
train split (local or remote: read through litdata's streaming, as training reads it) and refuses to start when a compact vocabulary not built from that corpus leaves any of them
with an unknown token. Other tokenizers with an unknown token (WordPiece, WordLevel) are only warned about; a
byte-level BPE (open_clip's, Qwen's) spells every text and is not checked. During training every unknown token
is counted anyway (`data/unknown_tokens`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from genlip_lit.data.shard_check import FIX as SHARDS_FIX
from genlip_lit.data.shard_check import check_split, read_sample
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import is_remote, join, storage_errors, streaming_dataset
from genlip_lit.storage.paths import isfile as storage_isfile

log = logging.getLogger(__name__)

SAMPLE_CAPTIONS = 1_000  # captions the coverage check reads per data_dir, evenly spread over its train split
VOCAB_CAPTIONS = 100_000  # at most this many captions (evenly spread) build a compact vocabulary from shards
DATA_CORPUS = "data"  # compact_corpus value: the training data's directory (`genlip fit` fills it in)
FIX = ("use the full tokenizer (--model.init_args.tokenizer.init_args.compact_corpus=null) or a compact vocabulary "
       "built from this corpus (compact_corpus: data, as in experiments/corpus_cpu.yaml)")


def is_shard_dir(path: str) -> bool:
    """A `genlip optimize` output (a train/ split with a litdata index) or a split directory itself, on local disk
    or in object storage."""
    return storage_isfile(join(path, "train", "index.json")) or storage_isfile(join(path, "index.json"))


def shard_captions(data_dir: str, limit: int) -> tuple[list[str], int]:
    """(up to `limit` captions of the train split of `data_dir`, evenly spread over it in stored order; the split's
    sample count). Only the sampled items are read (litdata random access), so the cost is bounded by `limit`."""

    split = join(data_dir, "train")
    split = split if storage_isfile(join(split, "index.json")) else data_dir
    check_split(split)  # a damaged local chunk: one line here, not litdata's timeout inside the config's instantiation
    try:
        dataset = streaming_dataset(split)
    except (ValueError, KeyError, OSError) as err:
        raise GenLIPUserError(f"{join(split, 'index.json')} is not a readable litdata index "
                              f"({type(err).__name__}: {err}); {SHARDS_FIX}") from err
    # every sample of the split, whatever the ranks: len(dataset) is this rank's share when WORLD_SIZE is set
    # (torchrun, a multi-node launch), and the vocabulary is built before the process group exists
    total = sum(end - start for start, end in dataset.region_of_interest)
    count = min(total, max(0, int(limit)))
    captions = []
    for k in range(count):
        with storage_errors(split) if is_remote(split) else contextlib.nullcontext():
            item = read_sample(dataset, k * total // count, split)
        if not isinstance(item, dict) or "caption" not in item:
            raise GenLIPUserError(f"samples in {split!r} have no 'caption' field: write the shards with `genlip "
                                  "optimize`")
        captions.append(str(item["caption"]))
    return captions, total


def unknown_word(tokenizer: Any, caption: str) -> str | None:
    """The first whitespace-separated word of `caption` the tokenizer cannot spell (None if every word is known)."""
    unk = tokenizer.unk_id
    for word in caption.split():
        if unk in tokenizer.encode(word):
            return word
    return None


def same_place(a: str, b: str) -> bool:
    """Two spellings of one data_dir (a URL up to a trailing '/', a local path up to ~ and relative parts)."""
    if is_remote(a) or is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    return os.path.abspath(os.path.expanduser(a)) == os.path.abspath(os.path.expanduser(b))


def _built_from(tokenizer: Any, data_dir: str) -> bool:
    corpus = getattr(tokenizer, "compact_corpus", None)
    return isinstance(corpus, str) and same_place(corpus, data_dir)


def check_caption_coverage(tokenizer: Any, data_dirs: list[str], limit: int = SAMPLE_CAPTIONS) -> None:
    """Refuse (one line) a compact vocabulary that leaves sampled captions of a data_dir (local or remote) with
    unknown tokens, unless it was built from that very data_dir; warn for any other tokenizer that does."""
    unk = getattr(tokenizer, "unk_id", None)
    if unk is None:
        return  # byte-level BPE: every text has a spelling
    compact = bool(getattr(tokenizer, "is_compact", False))
    for data_dir in data_dirs:
        if not is_shard_dir(data_dir):
            continue
        captions, total = shard_captions(data_dir, limit)
        hit = [c for c in captions if unk in tokenizer.encode(c)]
        if not hit:
            continue
        word = next((w for w in map(lambda c: unknown_word(tokenizer, c), hit) if w), None)
        example = f" (e.g. {word!r})" if word else ""
        counts = f"{len(hit)} of {len(captions)} sampled captions (of {total:,})"
        if compact and not _built_from(tokenizer, data_dir):
            corpus = getattr(tokenizer, "compact_corpus", None)
            source = f"compact_corpus {corpus!r}" if corpus else "the checkpoint's compact vocabulary"
            raise GenLIPUserError(
                f"the tokenizer's compact vocabulary ({source}, {tokenizer.vocab_size} tokens) cannot spell the "
                f"captions of data_dir {data_dir}: {counts} hold unknown tokens{example}; {FIX}"
            )
        log.warning("%s: %s hold tokens the tokenizer maps to its unknown token%s (counted in data/unknown_tokens)",
                    data_dir, counts, example)
