"""GenLIPModule: text format from the tokenizer, checkpoint round trip, encoder contract."""

import lightning as L
import pytest
import torch
from helpers import TINY_ARCH, tiny_objective, write_checkpoint

from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.modules import GenLIPModule

ARCH = {**TINY_ARCH, "num_registers": 1}


def _module(**kw):
    return tiny_objective("genlip", ARCH, seed=0, prompt="describe the image.", **kw)


def test_vocab_follows_tokenizer_and_contract_shapes():
    m = _module().eval()
    assert m.model.lm_head.out_features == m.tokenizer.vocab_size < 200
    px = torch.randn(2, 3, 32, 32)
    assert m.encode_patches(px).shape == (2, 16, 64)
    assert m.encode_pooled(px).shape == (2, 64)
    caps = m.generate_captions(px, max_new_tokens=4)
    assert len(caps) == 2 and all(isinstance(c, str) for c in caps)
    scores = m.score_captions(px, ["a small red circle.", "a large blue square at the top."])
    assert scores.shape == (2,) and (scores < 0).all()


def test_checkpoint_round_trip_rebuilds_everything(tmp_path):
    m = _module().eval()
    loaded, _ = load_checkpoint(write_checkpoint(m, tmp_path / "m.ckpt"))
    assert type(loaded) is GenLIPModule and loaded.caption_encoder.prompt_ids() == m.caption_encoder.prompt_ids()
    px = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_patches(px), m.encode_patches(px), atol=0, rtol=0)
    assert loaded.generate_captions(px, 6) == m.generate_captions(px, 6)


def test_unknown_caption_tokens_are_logged_and_checkpointed():
    """data/unknown_tokens: the running count of the batches' unknown caption tokens, kept across a resume."""
    from genlip_lit.data.datamodule import BatchCollator

    m = _module(lr=1e-3, warmup_steps=0)
    enc = m.caption_encoder
    captions = ["a red zebra rides a bicycle", "a small red circle.", "two purple kites over the hills"]
    items = [{"pixel_values": torch.zeros(3, 32, 32, dtype=torch.uint8), **dict(zip(("input_ids", "loss_mask"),
              enc.encode(c))), "caption": c, "key": None, "label": -1, "unknown": 0} for c in captions]
    batch = BatchCollator(enc, 32)(items)
    batch.num_unknown = expected = sum(m.tokenizer.encode(c).count(m.tokenizer.unk_id) for c in captions)
    assert expected >= 4
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(m, train_dataloaders=torch.utils.data.DataLoader([batch, batch], batch_size=None))
    assert trainer.callback_metrics["data/unknown_tokens"] == 2 * expected == m.unknown_tokens
    ckpt = {"state_dict": m.state_dict()}
    m.on_save_checkpoint(ckpt)
    fresh = _module()
    fresh.on_load_checkpoint(ckpt)
    assert fresh.unknown_tokens == 2 * expected


def test_bad_schedule_settings_are_user_errors():
    from genlip_lit.errors import GenLIPUserError

    with pytest.raises(GenLIPUserError, match="min_lr"):
        _module(lr=1e-4, min_lr=1e-3)


def test_contract_readout_attention_and_text_matching():
    from genlip_lit.models.generate import score

    m = _module().eval()
    px = torch.randn(2, 3, 32, 32)
    words = ["red", "circle", "square"]
    scores = m.patch_word_scores(px, words)
    ids = torch.tensor(m.word_token_ids(words))
    assert scores.shape == (2, 16, 3)
    assert torch.allclose(scores, m.model.lm_head(m.encode_patches(px))[..., ids], atol=1e-5)
    # attention maps: one per layer over [register + 16 patches + text], rows are distributions
    ids_text = torch.tensor([m.caption_encoder.encode("a red circle")[0]] * 2)
    maps, num_prefix = m.attention_maps(px, ids_text)
    assert len(maps) == 2 and num_prefix == 17
    assert maps[0].shape == (2, 4, 17 + ids_text.shape[1], 17 + ids_text.shape[1])
    assert torch.allclose(maps[0].sum(-1), torch.ones(()), atol=1e-5)
    # text matching = likelihood of the text's tokens, EOS excluded (a template is a caption's start)
    got = m.text_match_scores(px, ["a red circle", "a blue square at"])
    ids0, mask0 = m.caption_encoder.encode("a red circle")
    mask0 = torch.tensor([mask0[:-1] + [False]] * 2)
    want, count = score(m.model, px, torch.tensor([ids0] * 2), mask0)
    assert got.shape == (2, 2) and torch.allclose(got[:, 0], want, atol=1e-5) and int(count[0]) == 3
