"""GenLIPModule: text format from the tokenizer, checkpoint round trip, encoder contract."""

import lightning as L
import pytest
import torch

from genlip_lit.data.tokenizer import OpenCLIPTokenizer
from genlip_lit.modules import GenLIPModule
from genlip_lit.modules.loading import load_checkpoint

ARCH = {"depth": 2, "width": 64, "ffn_hidden": 128, "num_registers": 1}


def _module(**kw):
    torch.manual_seed(0)
    tok = OpenCLIPTokenizer(compact_corpus="synthetic")
    return GenLIPModule(arch="tiny", arch_overrides=ARCH, tokenizer=tok, prompt="describe the image.", **kw)


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
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, max_steps=0)
    trainer.strategy.connect(m)
    path = tmp_path / "m.ckpt"
    trainer.save_checkpoint(path)
    loaded, _ = load_checkpoint(str(path))
    assert type(loaded) is GenLIPModule and loaded.caption_encoder.prompt_ids() == m.caption_encoder.prompt_ids()
    px = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_patches(px), m.encode_patches(px), atol=0, rtol=0)
    assert loaded.generate_captions(px, 6) == m.generate_captions(px, 6)


def test_bad_schedule_settings_are_user_errors():
    from genlip_lit.errors import GenLIPUserError

    with pytest.raises(GenLIPUserError, match="min_lr"):
        _module(lr=1e-4, min_lr=1e-3)
