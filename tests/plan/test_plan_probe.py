"""`genlip plan --probe PRESET` (plan/probe.py): the streamed probe's FLOPs come from the same counter as a real
forward pass, and its time is the printed arithmetic (the larger of compute and decode)."""

from __future__ import annotations

import pytest
import torch

from genlip_lit.cli import main
from genlip_lit.errors import GenLIPUserError
from genlip_lit.perf.devices import GPUS
from genlip_lit.plan.probe import ProbeRequest, format_probe_plan, plan_probe


def test_counted_on_meta_equals_a_real_forward_and_the_time_is_the_arithmetic() -> None:
    from genlip_lit.models import GenLIPConfig
    from genlip_lit.models.transformer import image_tower
    from genlip_lit.perf.counting import flop_counter

    request = ProbeRequest("tiny", gpus=2, epochs=3, train_images=1000, val_images=100, num_classes=10,
                           image_size=32, global_batch=64, mfu=0.5, workers_per_gpu=2, decode_rate=50.0)
    plan = plan_probe(request)
    tower = image_tower(GenLIPConfig.from_name("tiny")).eval()
    counter = flop_counter()
    with counter, torch.no_grad():
        tower.encode_image(torch.zeros(1, 3, 32, 32))
    assert plan.encoder_flops == counter.get_total_flops() > 0
    assert plan.head_train_flops > plan.head_eval_flops > 0  # a backward costs more than the forward alone
    assert plan.images == 3 * 1100
    total = 3 * (1000 * (plan.encoder_flops + plan.head_train_flops) + 100 * (plan.encoder_flops + plan.head_eval_flops))
    assert plan.total_flops == pytest.approx(total)
    assert plan.compute_hours == pytest.approx(total / (2 * GPUS["h100"].bf16_tflops * 1e12 * 0.5) / 3600)
    assert plan.decode_hours == pytest.approx(3300 / (2 * 2 * 50) / 3600)
    assert plan.hours == max(plan.compute_hours, plan.decode_hours)
    text = format_probe_plan(plan)
    assert "images: 3 epochs x (1,000 train + 100 val) = 3,300" in text and "decode-bound" in text


def test_the_command_plans_imagenet_for_a_preset(capsys) -> None:
    assert main(["plan", "--probe", "tiny", "--gpus", "8", "--probe-epochs", "2", "--decode-rate", "1e9"]) == 0
    out = capsys.readouterr().out
    assert "images: 2 epochs x (1,281,167 train + 50,000 val) = 2,662,334" in out and "compute-bound" in out
    assert "memory per GPU at 128 images (global 1024)" in out
    with pytest.raises(SystemExit):
        main(["plan", "--probe", "tiny", "--gpus", "3"])  # 1024 does not split over 3 GPUs
    assert "splits over 3 GPUs" in capsys.readouterr().err
    with pytest.raises(GenLIPUserError, match="unknown GenLIP preset"):
        plan_probe(ProbeRequest("nope", 8))
