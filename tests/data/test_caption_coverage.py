"""data/caption_coverage.py: a compact vocabulary that cannot spell a corpus is refused before training (one line
naming the data dir, the count and a word), one built from the corpus passes, a full byte-level BPE is never
checked; captions are read from shards, evenly spread and bounded."""

from __future__ import annotations

import logging

import pytest
from helpers import REAL_CAPTIONS, write_real_corpus

from genlip_lit.data import caption_coverage as coverage
from genlip_lit.data.datamodule import GenLIPDataModule
from genlip_lit.data.shards import optimize_synthetic
from genlip_lit.data.synthetic import SceneConfig
from genlip_lit.data.tokenizer import CaptionEncoder, HFTokenizer, OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError


@pytest.fixture(scope="module")
def real_dir(tmp_path_factory) -> str:
    return write_real_corpus(tmp_path_factory.mktemp("cov") / "real")


def _setup(data_dir: str, tokenizer) -> GenLIPDataModule:
    dm = GenLIPDataModule(data_dir=data_dir, image_size=16, batch_size=4, num_workers=0,
                          caption_encoder=CaptionEncoder(tokenizer, max_len=32))
    dm.setup("fit")
    return dm


def test_shard_captions_are_spread_and_bounded(real_dir) -> None:
    everything, total = coverage.shard_captions(real_dir, 100)
    assert total == 12 and everything == [REAL_CAPTIONS[i % 4] for i in range(12)]
    spread, total = coverage.shard_captions(real_dir, 3)
    assert total == 12 and spread == [REAL_CAPTIONS[i % 4] for i in (0, 4, 8)]  # evenly spaced, not the first 3


@pytest.mark.parametrize("rank", ["0", "1"])
def test_shard_captions_read_every_rank_s_samples_under_a_launcher(real_dir, monkeypatch, rank) -> None:
    # torchrun / a multi-node launch sets WORLD_SIZE before the process group exists (the vocabulary is built
    # then): litdata's len() is this rank's share, but the vocabulary and the coverage check need the corpus
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("GLOBAL_RANK", rank)
    everything, total = coverage.shard_captions(real_dir, 100)
    assert total == 12 and everything == [REAL_CAPTIONS[i % 4] for i in range(12)]


def test_compact_synthetic_vocabulary_is_refused_on_a_real_corpus(real_dir) -> None:
    with pytest.raises(GenLIPUserError) as err:
        _setup(real_dir, OpenCLIPTokenizer(compact_corpus="synthetic"))
    message = str(err.value)
    assert "\n" not in message
    assert f"data_dir {real_dir}: 12 of 12 sampled captions (of 12) hold unknown tokens (e.g. 'runs')" in message
    assert "compact_corpus 'synthetic'" in message and "compact_corpus=null" in message
    assert "compact_corpus: data" in message


def test_full_bpe_and_a_vocabulary_built_from_the_corpus_pass(real_dir, caplog) -> None:
    full = OpenCLIPTokenizer()
    assert full.unk_id is None
    with caplog.at_level(logging.WARNING):
        assert _setup(real_dir, full).train_dataset is not None
    from_corpus = OpenCLIPTokenizer(compact_corpus=real_dir)
    expected = {i for c in REAL_CAPTIONS for i in full.encode(c)}
    assert from_corpus.vocab_size == 4 + len(expected)
    for caption in REAL_CAPTIONS:
        assert from_corpus.decode(from_corpus.encode(caption)) == caption
    assert _setup(real_dir, from_corpus).train_dataset is not None
    assert not [r for r in caplog.records if "unknown" in r.getMessage()]
    # the vocabulary travels in the checkpoint state: restored with the shards gone
    restored = OpenCLIPTokenizer(compact_corpus="/gone/shards")
    restored.load_state_dict(from_corpus.state_dict())
    assert restored.encode(REAL_CAPTIONS[0]) == from_corpus.encode(REAL_CAPTIONS[0])


def test_synthetic_corpus_passes_the_compact_synthetic_vocabulary(tmp_path) -> None:
    scenes = str(tmp_path / "scenes")
    optimize_synthetic(scenes, num_train=16, num_val=4, seed=0, scene=SceneConfig(image_size=16, patch_size=8))
    assert _setup(scenes, OpenCLIPTokenizer(compact_corpus="synthetic")).train_dataset is not None


def test_other_tokenizers_with_an_unknown_token_are_warned_about(real_dir, tmp_path, caplog) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["a red circle."], trainers.WordLevelTrainer(special_tokens=["</s>", "[UNK]"]))
    tok.save(str(tmp_path / "wl.json"))
    word_level = HFTokenizer(str(tmp_path / "wl.json"))
    assert word_level.unk_id == tok.token_to_id("[UNK]")
    with caplog.at_level(logging.WARNING, logger=coverage.__name__):
        _setup(real_dir, word_level)  # a full vocabulary of the user's choice: counted and warned, not refused
    warned = [r.getMessage() for r in caplog.records if "unknown token" in r.getMessage()]
    assert len(warned) == 1 and "12 of 12 sampled captions" in warned[0] and "'black'" in warned[0]


def test_data_outside_genlip_fit_and_a_dir_without_shards_are_named(tmp_path) -> None:
    with pytest.raises(GenLIPUserError, match="compact_corpus 'data' stands for the training data's directory"):
        _ = OpenCLIPTokenizer(compact_corpus="data").vocab_size
    with pytest.raises(GenLIPUserError, match="without `genlip optimize` shards"):
        _ = OpenCLIPTokenizer(compact_corpus=str(tmp_path)).vocab_size
