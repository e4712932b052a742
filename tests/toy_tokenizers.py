"""Tokenizers JSON files for the fixtures' toy vocabularies (tests/fixtures/*/tiny/io.json text_conventions).

The fixtures were made with stand-ins for Qwen3 (official) and tiktoken cl100k_base (open_clip) that keep the real
strings but use small ids; these word-level tokenizers reproduce exactly those ids for the fixture texts, so the
imported tiny models caption and score with the text they were built with. Everything else maps to id 0.
"""

from __future__ import annotations

import json
import os

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def _io_json(impl: str) -> dict:
    with open(os.path.join(FIXTURES, impl, "tiny", "io.json")) as f:
        return json.load(f)


def write_toy_tokenizer(impl: str, path: str) -> str:
    """The toy tokenizer of fixture `impl` ("official" or "open_clip") as a tokenizers JSON file at `path`."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    conv = _io_json(impl)["text_conventions"]
    specials = conv.get("toy_special_ids", {})
    size = 300 if impl == "official" else 297  # official: the model's vocab; open_clip: tiktoken n_vocab
    vocab = {"<unk>": 0, **conv["toy_piece_ids"], **specials}
    taken = set(vocab.values())
    vocab.update({f"<unused_{i}>": i for i in range(size) if i not in taken})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    # pieces are words with their leading space (" the"), "." and "\n", as in the byte-level BPEs they stand for
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r" ?[^\s.]+|\.|\n"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(s, special=True) for s in specials])
    tok.save(path)
    return path
