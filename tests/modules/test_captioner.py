"""The encoder-decoder captioner baseline: GenLIP's exact image tower, a causal decoder, GenLIP's loss and contract."""

from __future__ import annotations

import glob
import os

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO, tiny_fit_args

from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.cli import main
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP, GenLIPConfig
from genlip_lit.models.captioner import EncoderDecoderCaptioner
from genlip_lit.models.transformer import TEXT_ONLY_PARTS
from genlip_lit.modules import CaptionerModule

VOCAB = 97


def tiny(**overrides) -> GenLIPConfig:
    return GenLIPConfig.from_name("tiny", **{"depth": 2, "width": 64, "ffn_hidden": 128, "vocab_size": VOCAB,
                                             **overrides})


@pytest.mark.parametrize("arch", ["tiny", "s16"])
def test_encoder_is_genlips_vision_tower_exactly(arch) -> None:
    cfg = GenLIPConfig.from_name(arch, vocab_size=VOCAB)
    genlip, captioner = GenLIP(cfg), EncoderDecoderCaptioner(cfg, decoder_layers=1)
    vision = {k: v.shape for k, v in genlip.state_dict().items() if not k.startswith(TEXT_ONLY_PARTS)}
    assert {k: v.shape for k, v in captioner.encoder.state_dict().items()} == vision
    assert captioner.num_params(include_text=False) == genlip.num_params(include_text=False)
    assert captioner.num_params() > genlip.num_params()  # the separate decoder is extra


def test_same_encoder_weights_give_the_same_patch_features() -> None:
    torch.manual_seed(0)
    cfg = tiny()
    genlip, captioner = GenLIP(cfg).eval(), EncoderDecoderCaptioner(cfg).eval()
    captioner.encoder.load_state_dict(
        {k: v for k, v in genlip.state_dict().items() if not k.startswith(TEXT_ONLY_PARTS)}
    )
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(captioner.encode_image(x), genlip.encode_image(x), rtol=0, atol=0)


def test_decoder_is_causal_and_reads_the_image() -> None:
    torch.manual_seed(0)
    model = EncoderDecoderCaptioner(tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    ids = torch.randint(0, VOCAB, (2, 9))
    changed = ids.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % VOCAB
    with torch.no_grad():
        memory = model.encode_memory(x)
        a, b = model.decode(memory, ids), model.decode(memory, changed)
        other_image = model.decode(model.encode_memory(torch.randn(2, 3, 32, 32)), ids)
    torch.testing.assert_close(a[:, :5], b[:, :5])  # later tokens never leak into earlier positions
    assert (a[:, 5:] - b[:, 5:]).abs().max() > 1e-4
    assert (a - other_image).abs().max() > 1e-4  # cross-attention: the image matters at every position


def test_parallel_prediction_sees_no_input_token() -> None:
    torch.manual_seed(0)
    model = EncoderDecoderCaptioner(tiny()).eval()
    memory = model.encode_memory(torch.randn(2, 3, 32, 32))
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        a = model.decode(memory, ids, parallel=True)
        b = model.decode(memory, torch.randint(0, VOCAB, (2, 7)), parallel=True)
    torch.testing.assert_close(a, b)  # inputs are all mask tokens: only positions and the image count


def test_loss_is_next_token_cross_entropy_on_masked_targets() -> None:
    torch.manual_seed(0)
    model = EncoderDecoderCaptioner(tiny()).eval()
    x = torch.randn(3, 3, 32, 32)
    ids = torch.randint(0, VOCAB, (3, 8))
    mask = torch.zeros(3, 8, dtype=torch.bool)
    mask[:, 2:6] = True
    mask[1, 6:] = True
    with torch.no_grad():
        out = model.loss(x, ids, mask)
        logits = model.text_logits(x, ids)[:, :-1]
    targets = mask[:, 1:]
    expected = F.cross_entropy(logits[targets], ids[:, 1:][targets])
    torch.testing.assert_close(out.loss, expected)
    assert int(out.num_tokens) == int(targets.sum())


def test_generation_and_scoring_agree_with_the_logits() -> None:
    torch.manual_seed(0)
    model = EncoderDecoderCaptioner(tiny()).eval()
    x = torch.randn(2, 3, 32, 32)
    out = model.generate(x, [1], max_new_tokens=6, eos_id=VOCAB + 5)  # an id never produced: all 6 steps run
    text = torch.cat([torch.ones(2, 1, dtype=torch.long), out.tokens], dim=1)
    with torch.no_grad():
        logits = model.text_logits(x, text)
    # greedy: each generated token is the argmax of the logits at the position before it
    torch.testing.assert_close(logits[:, :-1].argmax(-1), out.tokens)
    texts = torch.randint(0, VOCAB, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.bool)
    per_pair = torch.stack([model.score(x, texts[j].expand(2, -1), mask[j].expand(2, -1)) for j in range(3)], 1)
    torch.testing.assert_close(model.score_texts(x, texts, mask), per_pair)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(GenLIPUserError, match="decoder_layers"):
        CaptionerModule(decoder_layers=0)
    with pytest.raises(GenLIPUserError, match="parallel_prob"):
        CaptionerModule(parallel_prob=1.5)


def test_parallel_prob_one_trains_every_batch_in_parallel(monkeypatch) -> None:
    module = CaptionerModule(arch_overrides={"depth": 1, "width": 64, "ffn_hidden": 128}, parallel_prob=1.0)
    seen = []
    original = module.model.loss

    def spy(*args, parallel=False):
        seen.append(parallel)
        return original(*args, parallel=parallel)

    monkeypatch.setattr(module.model, "loss", spy)
    batch = type("B", (), {"pixel_values": torch.randn(2, 3, 32, 32), "input_ids": torch.randint(0, 50, (2, 6)),
                           "loss_mask": torch.ones(2, 6, dtype=torch.bool)})()
    module.caption_loss(batch)
    module.parallel_prob = 0.0
    module.caption_loss(batch)
    assert seen == [True, False]


@pytest.mark.slow
def test_captioner_trains_under_the_same_harness_and_callbacks(tmp_path) -> None:
    os.chdir(REPO)
    args = tiny_fit_args(tmp_path, max_steps=3)
    args = args[:3] + ["--config", "experiments/compare/captioner.yaml"] + args[3:] + [
        "--model.init_args.arch_overrides={depth: 2, width: 64, ffn_hidden: 128}",
        "--trainer.callbacks+=genlip_lit.callbacks.CaptionSamples", "--trainer.callbacks.budget=8",
        "--trainer.callbacks.every_n_steps=3",  # at the last step: before the final checkpoint is written
        "--trainer.callbacks+=genlip_lit.callbacks.ZeroShot", "--trainer.callbacks.budget=8",
        "--trainer.callbacks.every_n_steps=3",
        "--trainer.callbacks+=genlip_lit.callbacks.AttentionSink", "--trainer.callbacks.budget=4",
        "--trainer.callbacks.every_n_steps=3",
    ]
    assert main(args) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    module, _ = load_checkpoint(last)
    assert type(module) is CaptionerModule and module.objective_name == "captioner (enc-dec)"
    states = torch.load(last, weights_only=True)["callbacks"]
    captions = next(v for k, v in states.items() if k.startswith("CaptionSamples"))
    assert captions["history"][-1]["captions/cider"] >= 0.0
    sink = next(v for k, v in states.items() if k.startswith("AttentionSink"))
    assert 0.0 < sink["history"][-1]["sink/vision_to_first_mean"] < 1.0
    assert len(module.generate_captions(torch.randn(2, 3, 32, 32), max_new_tokens=4)) == 2
