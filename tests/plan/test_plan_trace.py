"""The meta-device step trace: FLOPs equal a real step's count, checkpointing and bf16 change memory as they must."""

from __future__ import annotations

import pytest
import torch

from genlip_lit.models import GenLIP, GenLIPConfig
from genlip_lit.perf.counting import flop_counter
from genlip_lit.plan.trace import SampleShape, _LiveBytes, meta_model, trace_step

TINY = dict(depth=3, width=64, ffn_hidden=128, num_heads=2, vocab_size=300, drop_path=0.1)
SHAPE = SampleShape((4, 4), 12, 3)


def real_step(config: GenLIPConfig, shape: SampleShape, batch: int, impl: str) -> tuple[int, _LiveBytes]:
    """Counted FLOPs and the allocation timeline of a real CPU forward + backward of the same network."""
    torch.manual_seed(0)
    model = GenLIP(config).train()
    model.set_attn_impl(impl)
    p = config.patch_size
    pixels = torch.randn(batch, 3, shape.grid[0] * p, shape.grid[1] * p)
    ids = torch.randint(0, config.vocab_size, (batch, shape.text_tokens))
    mask = torch.ones(batch, shape.text_tokens, dtype=torch.bool)
    mask[:, : shape.head_tokens] = False
    live = _LiveBytes({})
    live.ignore([*model.parameters(), *model.buffers(), pixels, ids, mask])
    with flop_counter() as counter, live:
        model.loss(pixels, ids, mask).loss.backward()
    return counter.get_total_flops(), live


@pytest.mark.parametrize("impl", ["mask", "sdpa"])
@pytest.mark.parametrize("loss_chunk_tokens", [0, 8])
def test_meta_flops_equal_a_real_step(impl, loss_chunk_tokens) -> None:
    config = GenLIPConfig.from_name("tiny", **TINY, loss_chunk_tokens=loss_chunk_tokens)
    real, _ = real_step(config, SHAPE, 3, impl)
    assert trace_step(meta_model(config, impl), SHAPE, 3).flops == real


def test_meta_memory_follows_a_real_steps_allocations() -> None:
    # the same tracker over real CPU tensors and over meta tensors: the same peak, since the meta step runs the
    # fused attention kernel the CPU runs
    config = GenLIPConfig.from_name("tiny", **TINY)
    _, live = real_step(config, SHAPE, 4, "mask")
    running, real_peak = 0, 0
    for _, delta in live.events:
        running += delta
        real_peak = max(real_peak, running)
    meta_peak = trace_step(meta_model(config, "mask"), SHAPE, 4).peak()
    assert meta_peak == pytest.approx(real_peak, rel=0.02)


def test_checkpointing_recomputes_a_forward_and_keeps_only_block_inputs() -> None:
    config = GenLIPConfig.from_name("tiny", **{**TINY, "depth": 4})
    model = meta_model(config, "mask")
    plain, ckpt = trace_step(model, SHAPE, 8), trace_step(model, SHAPE, 8, checkpointing=True)
    blocks_forward = trace_step(meta_model(GenLIPConfig.from_name("tiny", **{**TINY, "depth": 5}), "mask"),
                                SHAPE, 8).flops - plain.flops  # one more block: its forward + backward
    assert plain.flops < ckpt.flops < plain.flops + 4 * blocks_forward  # + one forward per block, < 1 fwd+bwd
    assert ckpt.alive_at("trunk_end") < plain.alive_at("trunk_end") / 3
    assert ckpt.peak() < plain.peak()
    assert config.grad_checkpointing is False  # the trace restores the switch


def test_bf16_halves_activations_and_keeps_one_copy_per_weight() -> None:
    config = GenLIPConfig.from_name("tiny", **TINY)
    model = meta_model(config, "sdpa")
    fp32, bf16 = trace_step(model, SHAPE, 8), trace_step(model, SHAPE, 8, half=torch.bfloat16)
    assert bf16.flops == fp32.flops
    assert bf16.alive_at("trunk_end", exclude=("weight_copy",)) < 0.75 * fp32.alive_at("trunk_end")
    # autocast casts every weight a matmul, linear or conv reads, once; not norms, biases' vectors or embeddings
    matmul_weights = sum(p.numel() for n, p in model.named_parameters()
                         if p.ndim >= 2 and not n.startswith(("tok_embed", "registers")))
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias") and "norm" not in n)
    assert 2 * matmul_weights <= bf16.kind_bytes("weight_copy") <= 2 * (matmul_weights + biases)
    assert bf16.kind_bytes("grad") == fp32.kind_bytes("grad") == 4 * sum(p.numel() for p in model.parameters())
