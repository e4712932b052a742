"""How long a dataset's captions are in tokens, next to the text lengths the configs train with.

    captions: median 14, p95 38, max 2,140 tokens (open_clip BPE, all 796 train captions); cut in training at
    max_text_len 64 (corpus_cpu.yaml): 31 (3.9%), 128 (stage1_corpus.yaml): 12 (1.5%), 512 (stage2_corpus.yaml): 0

`genlip optimize` prints this line at the end of every run (and stores the figures in its report), so captions
much longer than the model reads (a sidecar holding translations after the caption, a pasted page) show before
training instead of as a bare "N captions cut" count afterwards. Tokens are those of the default tokenizer
(open_clip's bundled BPE, what the configs use); a caption's room is max_text_len minus BOS and EOS (no prompt).
"""

from __future__ import annotations

import math
from typing import Any

SAMPLE = 2_000  # captions read (evenly spread over the train split): bounds the cost on a large corpus
TEXT_SPECIALS = 2  # BOS + EOS around a caption (the "genlip" text template, no prompt)
# the text length (model.init_args.max_text_len) of each config that trains on your own data;
# tests/ingest/test_caption_lengths.py checks these against the YAML files
CONFIG_TEXT_LENS: dict[str, int] = {"corpus_cpu.yaml": 64, "stage1_corpus.yaml": 128, "stage2_corpus.yaml": 512}


def percentile(sorted_values: list[int], q: float) -> int:
    """The nearest-rank percentile (q in [0, 100]) of an ascending list (0 for an empty one)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_summary(lengths: list[int], total: int, text_lens: dict[str, int] | None = None) -> dict[str, Any]:
    """Median, p95, max of token `lengths` (a sample of `total` captions) and, per config, how many would be cut."""
    ordered = sorted(lengths)
    configs = text_lens if text_lens is not None else CONFIG_TEXT_LENS
    cut = {name: sum(1 for n in ordered if n > max_len - TEXT_SPECIALS) for name, max_len in configs.items()}
    return {
        "tokenizer": "open_clip BPE",
        "counted": len(ordered),
        "train_captions": total,
        "median": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "max": ordered[-1] if ordered else 0,
        "max_text_len": dict(configs),
        "would_be_cut": cut,
    }


def caption_token_lengths(data_dir: str, limit: int = SAMPLE) -> dict[str, Any]:
    """The token length summary of up to `limit` train captions of a `genlip optimize` output."""
    from genlip_lit.data.caption_coverage import shard_captions
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer

    captions, total = shard_captions(data_dir, limit)
    tokenizer = OpenCLIPTokenizer()
    return length_summary([len(tokenizer.encode(c)) for c in captions], total)


def summary_text(summary: dict[str, Any]) -> str:
    """The one line `genlip optimize` prints (see the module docstring)."""
    counted, total = summary["counted"], summary["train_captions"]
    which = f"all {total:,}" if counted == total else f"{counted:,} of the {total:,}"
    cuts = []
    for name, max_len in summary["max_text_len"].items():
        n = summary["would_be_cut"][name]
        share = f" ({100 * n / counted:.1f}%)" if n and counted else ""
        cuts.append(f"{max_len} ({name}): {n:,}{share}")
    return (f"captions: median {summary['median']:,}, p95 {summary['p95']:,}, max {summary['max']:,} tokens "
            f"({summary['tokenizer']}, {which} train captions); cut in training at max_text_len "
            + ", ".join(cuts))
