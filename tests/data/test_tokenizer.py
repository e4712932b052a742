"""Tokenizers (open_clip BPE, HF tokenizers JSON, compact vocabularies) and the caption text format."""

from __future__ import annotations

import json

import pytest
import torch

from genlip_lit.data.synthetic import SceneConfig, caption_vocabulary, generate_scene
from genlip_lit.data.tokenizer import CaptionEncoder, HFTokenizer, OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError

CAPTIONS = [
    generate_scene(7, i, SceneConfig(image_size=32, patch_size=8, word_prob=0.5)).caption for i in range(40)
]


@pytest.fixture(scope="module")
def full() -> OpenCLIPTokenizer:
    return OpenCLIPTokenizer()


@pytest.fixture(scope="module")
def compact() -> OpenCLIPTokenizer:
    return OpenCLIPTokenizer(compact_corpus="synthetic")


def _train_hf(path: str, captions: list[str], with_specials: bool) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if with_specials:
        tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        tok.train_from_iterator(
            captions, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "[UNK]"])
        )
    else:  # Qwen-like: byte-level BPE with only <|endoftext|>
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tok.train_from_iterator(captions, trainer)
    tok.save(path)


def test_openclip_full_roundtrip(full: OpenCLIPTokenizer) -> None:
    assert full.vocab_size == 49408
    assert (full.bos_id, full.eos_id) == (49406, 49407)
    for c in CAPTIONS + ["a large red circle at the top left."]:
        ids = full.encode(c)
        assert full.bos_id not in ids and full.eos_id not in ids
        assert full.decode(ids) == c
    # specials and padding vanish from decoded text; tensors are accepted
    ids = [full.bos_id, *full.encode("it's a dog, isn't it?"), full.eos_id, full.pad_id]
    assert full.decode(torch.tensor(ids)) == "it's a dog, isn't it?"


def test_compact_roundtrip_and_size(compact: OpenCLIPTokenizer, full: OpenCLIPTokenizer) -> None:
    assert compact.vocab_size < 200
    assert (compact.pad_id, compact.bos_id, compact.eos_id, compact.unk_id) == (0, 1, 2, 3)
    before = compact.num_unknown
    for c in CAPTIONS:
        ids = compact.encode(c)
        assert all(0 <= i < compact.vocab_size for i in ids)
        assert compact.decode(ids) == c == full.decode(full.encode(c))
    assert compact.num_unknown == before
    # every word of the vocabulary is known (so no caption can produce unk)
    for w in caption_vocabulary():
        assert compact.unk_id not in compact.encode(f"{w}, {w}.")


def test_compact_unknown_words_map_to_unk(compact: OpenCLIPTokenizer) -> None:
    before = compact.num_unknown
    ids = compact.encode("a red zebra")
    assert ids.count(compact.unk_id) >= 1
    assert compact.num_unknown - before == ids.count(compact.unk_id)
    assert compact.decode(ids) == "a red <unk>"


def test_compact_is_deterministic_and_state_dict_roundtrip(compact: OpenCLIPTokenizer, tmp_path) -> None:
    other = OpenCLIPTokenizer(compact_corpus="synthetic")
    assert other.state_dict() == compact.state_dict()
    state = json.loads(json.dumps(compact.state_dict()))  # JSON-able
    # a checkpoint restores the vocabulary without the corpus (here: a corpus file that is gone)
    restored = OpenCLIPTokenizer(compact_corpus=str(tmp_path / "gone.txt"))
    restored.load_state_dict(state)
    assert restored.vocab_size == compact.vocab_size
    assert restored.encode(CAPTIONS[0]) == compact.encode(CAPTIONS[0])
    # and a full-mode tokenizer can be switched to the checkpoint's compact vocabulary
    switched = OpenCLIPTokenizer()
    switched.load_state_dict(state)
    assert switched.vocab_size == compact.vocab_size and switched.bos_id == 1
    with pytest.raises(GenLIPUserError, match="gone.txt"):
        _ = OpenCLIPTokenizer(compact_corpus=str(tmp_path / "gone.txt")).vocab_size


def test_compact_from_file(tmp_path) -> None:
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a blue dog.\na red cat sits.\n\n", encoding="utf-8")
    tok = OpenCLIPTokenizer(compact_corpus=str(corpus))
    assert tok.vocab_size == 4 + len({"a", "blue", "dog", ".", "red", "cat", "sits"})
    assert tok.decode(tok.encode("a red dog sits.")) == "a red dog sits."
    assert tok.unk_id in tok.encode("a green dog")


def test_hf_tokenizer_qwen_like(tmp_path) -> None:
    path = str(tmp_path / "tok.json")
    _train_hf(path, CAPTIONS, with_specials=False)
    tok = HFTokenizer(path)
    eot = tok._tok.token_to_id("<|endoftext|>")
    assert tok.eos_id == eot and tok.bos_id == eot and tok.pad_id == eot  # no BOS: EOS doubles as BOS
    for c in CAPTIONS[:10]:
        assert tok.decode([tok.bos_id, *tok.encode(c), tok.eos_id]) == c
    comp = HFTokenizer(path, compact_corpus="synthetic")
    assert comp.vocab_size < tok.vocab_size
    for c in CAPTIONS[:10]:
        ids = comp.encode(c)
        assert comp.unk_id not in ids and max(ids) < comp.vocab_size
        assert comp.decode(ids) == c
    assert comp.state_dict()["compact_base_ids"] == sorted(comp.state_dict()["compact_base_ids"])


def test_hf_tokenizer_explicit_specials_and_errors(tmp_path) -> None:
    path = str(tmp_path / "wl.json")
    _train_hf(path, CAPTIONS, with_specials=True)
    tok = HFTokenizer(path)  # found by name
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    tok2 = HFTokenizer(path, bos_token="</s>", eos_token="<s>", pad_token="[UNK]")
    assert (tok2.bos_id, tok2.eos_id, tok2.pad_id) == (2, 1, 3)
    with pytest.raises(GenLIPUserError, match="nope"):
        HFTokenizer(path, eos_token="nope")
    missing = str(tmp_path / "missing" / "tokenizer.json")
    with pytest.raises(GenLIPUserError, match="missing/tokenizer.json"):
        _ = HFTokenizer(missing).vocab_size  # a missing file is named on first use (a checkpoint may supply it)
    with pytest.raises(GenLIPUserError, match="HFTokenizer"):
        OpenCLIPTokenizer().load_state_dict(tok.state_dict())


def test_hf_tokenizer_travels_in_its_state(tmp_path) -> None:
    """The tokenizer JSON is part of `state_dict()`: a tokenizer whose file is gone is rebuilt from the state
    alone (what a checkpoint holds) and encodes, decodes and sizes exactly as the original."""
    path = tmp_path / "tok.json"
    _train_hf(str(path), CAPTIONS, with_specials=False)
    tok = HFTokenizer(str(path), compact_corpus=None)
    state = json.loads(json.dumps(tok.state_dict()))  # JSON-able, as checkpoints need
    path.unlink()
    rebuilt = HFTokenizer(**tok.init_args())
    rebuilt.load_state_dict(state)
    assert rebuilt.vocab_size == tok.vocab_size and rebuilt.state_dict() == tok.state_dict()
    for c in CAPTIONS[:5]:
        assert rebuilt.encode(c) == tok.encode(c) and rebuilt.decode(tok.encode(c)) == c


def test_hf_tokenizer_ids_beyond_the_file(tmp_path) -> None:
    """open_clip's GenLIP appends eos, pad, bos after the base vocabulary: given ids extend the vocabulary,
    decode skips them."""
    path = str(tmp_path / "tok.json")
    _train_hf(path, CAPTIONS, with_specials=False)
    base = HFTokenizer(path)
    n = base.vocab_size
    tok = HFTokenizer(path, eos_id=n, pad_id=n + 1, bos_id=n + 2)
    assert (tok.eos_id, tok.pad_id, tok.bos_id, tok.vocab_size) == (n, n + 1, n + 2, n + 3)
    ids = tok.encode(CAPTIONS[0])
    assert tok.decode([n + 2, *ids, n, n + 1]) == CAPTIONS[0]
    assert HFTokenizer(**tok.init_args()).bos_id == n + 2


def test_official_template(tmp_path) -> None:
    """The released models' text: prompt + caption + <|im_end|> + newline, no BOS; prompt not a target,
    caption and both end tokens are; generation stops at <|im_end|>."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

    tok_json = Tokenizer(models.WordLevel({"[UNK]": 0, "<|endoftext|>": 1, "describe": 2, "a": 3, "cat": 4,
                                           "\n": 5}, unk_token="[UNK]"))
    tok_json.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok_json.add_special_tokens([AddedToken("<|im_end|>", special=True)])
    tok_json.add_tokens([AddedToken("\n", normalized=False)])
    tok_json.save(str(tmp_path / "t.json"))
    tok = HFTokenizer(str(tmp_path / "t.json"))
    im_end = tok._tok.token_to_id("<|im_end|>")
    enc = CaptionEncoder(tok, prompt="describe", max_len=16, template="official")
    ids, mask = enc.encode("a cat")
    assert ids == [2, 3, 4, im_end, 5] and mask == [False, True, True, True, True]
    assert enc.prompt_ids() == [2] and enc.stop_id == im_end
    assert enc.encode("a cat", with_end=False) == ([2, 3, 4], [False, True, True])
    with pytest.raises(GenLIPUserError, match="needs a prompt"):
        CaptionEncoder(tok, prompt=None, template="official")
    with pytest.raises(GenLIPUserError, match="unknown text template"):
        CaptionEncoder(tok, prompt="x", template="chatml")
    assert CaptionEncoder(tok, prompt="describe", max_len=16).encode("a cat")[0][0] == tok.bos_id


def test_unknown_tokens_are_counted_for_every_tokenizer(compact, full, tmp_path) -> None:
    """CaptionEncoder counts caption tokens mapped to the tokenizer's unknown token (the whole caption, also the
    part a cut drops); a byte-level BPE has none and counts 0."""
    caption = "a red zebra rides a purple bicycle past a bakery"
    enc = CaptionEncoder(compact, max_len=8)  # cut: the count is the tokenizer's, not the kept part's
    ids, _ = enc.encode(caption)
    expected = compact.encode(caption).count(compact.unk_id)
    assert expected >= 3 and enc.num_unknown == expected and enc.num_truncated == 1
    assert ids.count(compact.unk_id) < expected
    enc.encode(CAPTIONS[0])
    assert enc.num_unknown == expected  # a caption inside the vocabulary adds nothing
    for byte_level in (full, _hf(tmp_path / "bpe.json", with_specials=False)):
        assert byte_level.unk_id is None
        counting = CaptionEncoder(byte_level, max_len=64)
        counting.encode(caption)
        assert counting.num_unknown == 0
    word_level = _hf(tmp_path / "wl.json", with_specials=True)  # WordLevel with [UNK]: full mode counts it too
    assert word_level.unk_id == word_level._tok.token_to_id("[UNK]")
    counting = CaptionEncoder(word_level, max_len=64)
    counting.encode("a red zebra")
    assert counting.num_unknown == 1 == word_level.num_unknown
    # compact over a base with its own unknown token: both kinds of unknown become the compact one
    comp = HFTokenizer(str(tmp_path / "wl.json"), compact_corpus="synthetic")
    assert comp.encode("a red zebra")[-1] == comp.unk_id == 3
    assert word_level.unk_id not in comp._kept


def _hf(path, with_specials: bool) -> HFTokenizer:
    _train_hf(str(path), CAPTIONS, with_specials=with_specials)
    return HFTokenizer(str(path))


def test_caption_encoder_masks(full: OpenCLIPTokenizer) -> None:
    enc = CaptionEncoder(full, prompt="Describe the image.", max_len=64)
    prompt = full.encode("Describe the image.")
    assert enc.prompt_ids() == [full.bos_id, *prompt]
    cap = full.encode(CAPTIONS[0])
    ids, mask = enc.encode(CAPTIONS[0])
    assert ids == [full.bos_id, *prompt, *cap, full.eos_id]
    assert mask == [False] * (1 + len(prompt)) + [True] * (len(cap) + 1)
    assert enc.num_truncated == 0
    no_prompt = CaptionEncoder(full)
    assert no_prompt.encode("a dog.")[1] == [False, True, True, True, True]  # a, dog, ".", EOS


def test_caption_encoder_truncation_keeps_eos(compact: OpenCLIPTokenizer) -> None:
    enc = CaptionEncoder(compact, prompt="a", max_len=8)
    ids, mask = enc.encode("a large red circle at the top left.")
    assert len(ids) == 8 and ids[-1] == compact.eos_id and ids[:2] == [compact.bos_id, compact.encode("a")[0]]
    assert mask == [False, False] + [True] * 6
    assert enc.num_truncated == 1
    enc.encode("a dog.")
    assert enc.num_truncated == 1
    with pytest.raises(GenLIPUserError, match="max_len"):
        CaptionEncoder(compact, prompt="a red dog", max_len=5).encode("x")


def test_collate_text_pads_right(compact: OpenCLIPTokenizer) -> None:
    enc = CaptionEncoder(compact, max_len=32)
    items = [enc.encode("a dog."), enc.encode("a large red circle at the top left.")]
    input_ids, loss_mask, text_mask = enc.collate_text(items)
    n0, n1 = len(items[0][0]), len(items[1][0])
    assert input_ids.shape == loss_mask.shape == text_mask.shape == (2, n1)
    assert input_ids.dtype == torch.long and loss_mask.dtype == text_mask.dtype == torch.bool
    assert input_ids[0, :n0].tolist() == items[0][0]
    assert (input_ids[0, n0:] == compact.pad_id).all()
    assert text_mask.sum(1).tolist() == [n0, n1]
    assert not loss_mask[0, n0:].any() and loss_mask[0, :n0].tolist() == items[0][1]


def test_plain_ascii_fast_path_matches_open_clip() -> None:
    """Plain ASCII skips open_clip's ftfy/html cleaning; the ids must be exactly what open_clip gives."""
    import random

    from genlip_lit.ingest.demo_corpus import demo_samples

    tok = OpenCLIPTokenizer()
    rng = random.Random(0)
    printable = [chr(c) for c in range(32, 127)] + ["\t", "\n", "\r"]
    texts = [s.caption for s in demo_samples(40)] + [
        "Hello,   World!! it's 3:45pm -- \"quoted\" (paren) [x] {y} ~`^|\\ 'll 'd <start_of_text>",
        "A\tB\nC\r D", "", "   ", "100% OK; a/b=c+d*e?", "UPPER lower MiXeD 123 4567",
        "caf\u00e9 d\u00e9j\u00e0 vu", "fish &amp; chips &lt;b&gt;", "escape \x1b[31mred", "nul\x00byte",
    ] + ["".join(rng.choice(printable) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for text in texts:
        assert tok._base_encode(text) == list(tok._tok.encode(text)), repr(text)
