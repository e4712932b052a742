"""Chunked LM-head cross-entropy: equal loss, hits and gradients to plain logits; far less peak memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import REPO

from genlip_lit.models.lm_loss import chunked_lm_head_loss, lm_head_loss

PAPER_VOCAB = 151936


def plain(hidden, weight, targets):
    logits = hidden @ weight.T
    return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).sum()


def grads_of(fn, hidden, weight, targets):
    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, hits = fn(h, w, targets)
    loss.backward()
    return loss.detach(), hits, h.grad, w.grad


@pytest.mark.parametrize("vocab,tokens,chunk", [(50, 13, 1), (50, 13, 4), (50, 13, 13), (50, 13, 100),
                                                (PAPER_VOCAB, 40, 16)])
def test_equal_loss_hits_and_gradients(vocab, tokens, chunk) -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(tokens, 32), torch.randn(vocab, 32) * 0.2
    targets = torch.randint(0, vocab, (tokens,))
    targets[:3] = (hidden[:3] @ weight.T).argmax(-1)  # a few hits to count
    ref = grads_of(plain, hidden, weight, targets)
    got = grads_of(lambda h, w, t: chunked_lm_head_loss(h, w, t, chunk), hidden, weight, targets)
    torch.testing.assert_close(got[0], ref[0], rtol=1e-6, atol=1e-6)
    assert int(got[1]) == int(ref[1]) >= 3
    torch.testing.assert_close(got[2], ref[2], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(got[3], ref[3], rtol=1e-5, atol=1e-7)


def test_frozen_head_and_upstream_scaling() -> None:
    torch.manual_seed(0)
    hidden, weight = torch.randn(9, 8, requires_grad=True), torch.randn(30, 8)  # head frozen: no weight grad
    targets = torch.randint(0, 30, (9,))
    loss, _ = chunked_lm_head_loss(hidden, weight, targets, 4)
    (3.0 * loss).backward()  # the upstream gradient scales the stored one
    h_ref = hidden.detach().clone().requires_grad_()
    (3.0 * F.cross_entropy(h_ref @ weight.T, targets)).backward()
    torch.testing.assert_close(hidden.grad, h_ref.grad)
    assert lm_head_loss(hidden, weight, targets, 0)[0].item() == pytest.approx(loss.item(), abs=1e-6)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_lm_head_loss(hidden, weight, targets, 0)


@pytest.mark.slow
def test_chunked_peak_memory_is_under_a_third_of_plain_at_the_papers_vocabulary(tmp_path) -> None:
    out = tmp_path / "rows.json"
    # width 64 keeps the matmuls cheap on CPU; the logits (tokens x 151,936) dominate memory either way
    cmd = [sys.executable, os.path.join(REPO, "benchmarks", "bench_lm_head.py"), "--tokens", "2048", "--dim", "64",
           "--chunks", "256", "--device", "cpu", "--repeats", "1", "--json", str(out)]
    subprocess.run(cmd, check=True, capture_output=True)
    plain_row, chunked_row = json.loads(out.read_text())
    assert chunked_row["peak_bytes"] <= 0.3 * plain_row["peak_bytes"], (chunked_row, plain_row)
    assert chunked_row["loss"] == pytest.approx(plain_row["loss"], rel=1e-5)


def test_genlip_loss_is_unchanged_by_chunking() -> None:
    from genlip_lit.models import GenLIP, GenLIPConfig

    results = []
    for chunk in (0, 3):
        torch.manual_seed(0)
        model = GenLIP(GenLIPConfig.from_name("tiny", depth=1, width=64, ffn_hidden=128, vocab_size=50,
                                              loss_chunk_tokens=chunk))
        x, ids = torch.randn(2, 3, 32, 32), torch.randint(0, 50, (2, 7))
        out = model.loss(x, ids, torch.ones(2, 7, dtype=torch.bool))
        out.loss.backward()
        results.append((out.loss.detach(), out.num_correct, model.lm_head.weight.grad, model.patch_embed.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_chunked_loss_under_bf16_autocast_matches_plain() -> None:
    # the GPU recipe trains under bf16 autocast: the chunked path must stay within bf16 rounding of the plain one
    torch.manual_seed(0)
    hidden, weight = torch.randn(24, 32), torch.randn(500, 32) * 0.2
    targets = torch.randint(0, 500, (24,))
    results = []
    for fn in (plain, lambda h, w, t: chunked_lm_head_loss(h, w, t, 7)):
        h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, _ = fn(h, w, targets)
        loss.float().backward()
        assert h.grad.dtype == h.dtype and w.grad.dtype == w.dtype
        results.append((loss.float().detach(), h.grad, w.grad))
    for got, ref in zip(results[1], results[0]):
        torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-3)
