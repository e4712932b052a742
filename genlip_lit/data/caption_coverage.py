"""Does a tokenizer spell a corpus's captions? Captions read cheaply from `genlip optimize` shards, and the check
`genlip fit` runs before it trains a compact vocabulary on them.

A compact vocabulary (`compact_corpus: synthetic`: the ~60 BPE tokens of the embedded scenes) turns every word
outside it into `<unk>`. Trained on a real corpus, "a black dog runs on a beach" would become "a black dog <unk>
on a <unk>" with no error: `GenLIPDataModule.setup("fit")` samples `SAMPLE_CAPTIONS` captions spread over each
local train split and refuses to start when a compact vocabulary not built from that corpus leaves any of them
with an unknown token. Other tokenizers with an unknown token (WordPiece, WordLevel) are only warned about; a
byte-level BPE (open_clip's, Qwen's) spells every text and is not checked. During training every unknown token
is counted anyway (`data/unknown_tokens`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from genlip_lit.data.shard_check import FIX as SHARDS_FIX
from genlip_lit.data.shard_check import check_split, read_sample
from genlip_lit.errors import GenLIPUserError

log = logging.getLogger(__name__)

SAMPLE_CAPTIONS = 1_000  # captions the coverage check reads per data_dir, evenly spread over its train split
VOCAB_CAPTIONS = 100_000  # at most this many captions (evenly spread) build a compact vocabulary from shards
DATA_CORPUS = "data"  # compact_corpus value: the training data's directory (`genlip fit` fills it in)
FIX = ("use the full tokenizer (--model.init_args.tokenizer.init_args.compact_corpus=null) or a compact vocabulary "
       "built from this corpus (compact_corpus: data, as in experiments/corpus_cpu.yaml)")


def _is_remote(path: str) -> bool:
    # the datamodule's test (not imported: it pulls in Lightning, and tokenizers must stay light)
    return "://" in path or path.startswith("local:")


def is_shard_dir(path: str) -> bool:
    """A local `genlip optimize` output (a train/ split with a litdata index) or a split directory itself."""
    return os.path.isfile(os.path.join(path, "train", "index.json")) or os.path.isfile(os.path.join(path, "index.json"))


def shard_captions(data_dir: str, limit: int) -> tuple[list[str], int]:
    """(up to `limit` captions of the train split of `data_dir`, evenly spread over it in stored order; the split's
    sample count). Only the sampled items are read (litdata random access), so the cost is bounded by `limit`."""
    import litdata

    split = os.path.join(data_dir, "train")
    split = split if os.path.isfile(os.path.join(split, "index.json")) else data_dir
    check_split(split)  # a damaged chunk: one line here, not litdata's timeout inside the config's instantiation
    try:
        dataset = litdata.StreamingDataset(input_dir=split)
    except (ValueError, KeyError, OSError) as err:
        raise GenLIPUserError(f"{os.path.join(split, 'index.json')} is not a readable litdata index "
                              f"({type(err).__name__}: {err}); {SHARDS_FIX}") from err
    total = len(dataset)
    count = min(total, max(0, int(limit)))
    captions = []
    for k in range(count):
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


def _built_from(tokenizer: Any, data_dir: str) -> bool:
    corpus = getattr(tokenizer, "compact_corpus", None)
    return isinstance(corpus, str) and os.path.abspath(os.path.expanduser(corpus)) == os.path.abspath(data_dir)


def check_caption_coverage(tokenizer: Any, data_dirs: list[str], limit: int = SAMPLE_CAPTIONS) -> None:
    """Refuse (one line) a compact vocabulary that leaves sampled captions of a local data_dir with unknown tokens,
    unless it was built from that very data_dir; warn for any other tokenizer that does. Remote dirs are not read
    (their unknown tokens are still counted in training)."""
    unk = getattr(tokenizer, "unk_id", None)
    if unk is None:
        return  # byte-level BPE: every text has a spelling
    compact = bool(getattr(tokenizer, "is_compact", False))
    for data_dir in data_dirs:
        if _is_remote(data_dir) or not is_shard_dir(data_dir):
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
