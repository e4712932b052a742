"""Local open_clip models in ContrastiveModule: weights from a file give the same embeddings; nothing downloads."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.baselines import load_open_clip
from genlip_lit.modules import ContrastiveModule

TINY_OPEN_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


@pytest.fixture
def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny-clip-test.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP))
    return str(path)


def test_local_weights_reproduce_the_saved_model(tmp_path, tiny_config) -> None:
    torch.manual_seed(0)
    reference = load_open_clip(tiny_config, None).eval()
    weights = tmp_path / "weights.pt"
    torch.save(reference.state_dict(), weights)
    module = ContrastiveModule(loss="clip", max_text_len=16, open_clip_model=tiny_config,
                               open_clip_weights=str(weights)).eval()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, 49408, (2, 16))
    with torch.no_grad():
        pooled, tokens = reference.visual(x)
        torch.testing.assert_close(module.embed_images(x), F.normalize(pooled, dim=-1))
        torch.testing.assert_close(module.embed_texts(ids), F.normalize(reference.encode_text(ids), dim=-1))
        torch.testing.assert_close(module.encode_patches(x), tokens)
    assert module.encode_patches(x).shape == (2, 16, 64)
    assert module.patch_word_scores(x, ["red", "circle"]).shape == (2, 16, 2)
    assert module.logit_scale.item() == reference.logit_scale.item()  # the pretrained temperature is kept
    assert module.num_vision_params() == sum(p.numel() for p in reference.visual.parameters())
    # a checkpoint carries the weights: reloading it must not need the original file
    checkpoint = {"hyper_parameters": dict(module.hparams)}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["hyper_parameters"]["open_clip_weights"] is None


def test_siglip_loss_on_a_clip_model_gets_a_bias(tiny_config) -> None:
    module = ContrastiveModule(loss="siglip", max_text_len=16, open_clip_model=tiny_config)
    assert module.logit_bias is not None and module.logit_bias.item() == -10.0
    x, ids = torch.randn(4, 3, 32, 32), torch.randint(0, 49408, (4, 16))
    assert torch.isfinite(module.compute_loss(module.embed_images(x), module.embed_texts(ids)))


def test_nothing_is_downloaded_and_mistakes_are_named(tmp_path, tiny_config) -> None:
    with pytest.raises(GenLIPUserError, match="Hugging Face hub"):
        ContrastiveModule(open_clip_model="hf-hub:timm/ViT-B-16-SigLIP", max_text_len=64)
    with pytest.raises(GenLIPUserError, match="local checkpoint file .*laion2b_s34b_b79k"):
        ContrastiveModule(open_clip_model=tiny_config, open_clip_weights="laion2b_s34b_b79k", max_text_len=16)
    with pytest.raises(GenLIPUserError, match="needs model.open_clip_model"):
        ContrastiveModule(open_clip_weights=str(tmp_path / "w.pt"))
    with pytest.raises(GenLIPUserError, match="context length 16"):
        ContrastiveModule(open_clip_model=tiny_config, max_text_len=48)
    with pytest.raises(GenLIPUserError, match="unknown open_clip architecture 'ViT-Nope'"):
        ContrastiveModule(open_clip_model="ViT-Nope")
    with pytest.raises(GenLIPUserError, match="config not found"):
        ContrastiveModule(open_clip_model=str(tmp_path / "absent.json"))
