"""`genlip plan --probe PRESET`: what the streamed full-dataset probe (`genlip probe-full`) costs before it runs.

    genlip plan --probe so16 --gpus 8                       # ImageNet-1k, experiments/probe_imagenet.yaml's protocol
    python -c "from genlip_lit.plan.probe import *; print(format_probe_plan(plan_probe(ProbeRequest('so16', 8))))"

Counted, not guessed: the encoder's forward FLOPs per image and the probe heads' forward + backward FLOPs come from
torch's FLOP counter (`perf/counting.py`, the count `genlip plan` and the Throughput callback use) on the meta device, so
nothing is allocated. The rest is arithmetic, each step printed: images = epochs x (train + val); time = FLOPs /
(GPUs x peak x MFU); and, since every image is decoded and augmented on the CPU each epoch, the decode time at an
assumed rate per data worker (JPEG decode + RandomResizedCrop; `benchmarks/gpu_check.py` measures both rates on the
GPU machine). The planned time is the larger of the two. Memory per GPU: the frozen encoder's fp32 weights, the
heads with their AdamW state, and the activations of one no-grad block pass at the per-GPU batch (an estimate;
gpu_check's probe line measures the peak).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from genlip_lit.data.transforms import DEFAULT_IMAGE_SIZE
from genlip_lit.perf.devices import GPUS, GPUSpec, usable_bytes

IMAGENET_TRAIN, IMAGENET_VAL, IMAGENET_CLASSES = 1_281_167, 50_000, 1000
DECODE_RATE = 250.0  # images/s per data worker (PIL JPEG decode of a ~500x375 image + RandomResizedCrop): assumed


@dataclass(frozen=True)
class ProbeRequest:
    arch: str
    gpus: int
    gpu: GPUSpec = GPUS["h100"]
    epochs: int = 20
    train_images: int = IMAGENET_TRAIN
    val_images: int = IMAGENET_VAL
    num_classes: int = IMAGENET_CLASSES
    image_size: int = DEFAULT_IMAGE_SIZE
    global_batch: int = 1024
    mfu: float = 0.4
    workers_per_gpu: int = 8
    decode_rate: float = DECODE_RATE


@dataclass(frozen=True)
class ProbePlan:
    request: ProbeRequest
    encoder_params: int
    head_params: int
    encoder_flops: float  # forward, one image
    head_train_flops: float  # attentive + linear heads, forward + backward, one image
    head_eval_flops: float  # forward, one image
    memory_bytes: float  # per GPU at the per-GPU batch

    @property
    def images(self) -> int:
        r = self.request
        return r.epochs * (r.train_images + r.val_images)

    @property
    def total_flops(self) -> float:
        r = self.request
        per_epoch = r.train_images * (self.encoder_flops + self.head_train_flops) + \
            r.val_images * (self.encoder_flops + self.head_eval_flops)
        return r.epochs * per_epoch

    @property
    def compute_hours(self) -> float:
        r = self.request
        return self.total_flops / (r.gpus * r.gpu.bf16_tflops * 1e12 * r.mfu) / 3600

    @property
    def decode_hours(self) -> float:
        r = self.request
        return self.images / (r.gpus * r.workers_per_gpu * r.decode_rate) / 3600

    @property
    def hours(self) -> float:
        return max(self.compute_hours, self.decode_hours)


def _count(fn) -> float:
    from genlip_lit.perf.counting import flop_counter

    counter = flop_counter()
    with counter:
        fn()
    return float(counter.get_total_flops())


def plan_probe(request: ProbeRequest) -> ProbePlan:
    """Count the encoder and heads of `request.arch` on the meta device; see the module docstring."""
    from genlip_lit.errors import GenLIPUserError
    from genlip_lit.eval.probes import AttentivePoolingClassifier, _default_heads
    from genlip_lit.models import GenLIPConfig
    from genlip_lit.models.transformer import image_tower
    from genlip_lit.studies.probe_module import LinearHead

    if request.gpus < 1 or request.epochs < 1 or request.global_batch % request.gpus:
        raise GenLIPUserError(f"--probe: need --gpus >= 1, --probe-epochs >= 1 and a global batch "
                              f"({request.global_batch}) that splits over {request.gpus} GPUs")
    config = GenLIPConfig.from_name(request.arch)
    size = request.image_size
    with torch.device("meta"):
        tower = image_tower(config).eval()
        attentive = AttentivePoolingClassifier(config.width, request.num_classes, _default_heads(config.width))
        linear = LinearHead(config.width, request.num_classes)
        pixels = torch.empty(1, 3, size, size)
        with torch.no_grad():
            encoder = _count(lambda: tower.encode_image(pixels))
            patches = tower.encode_image(pixels)
        labels = torch.zeros(1, dtype=torch.long)

        def train_step() -> None:
            loss = torch.nn.functional.cross_entropy(attentive(patches), labels) + \
                torch.nn.functional.cross_entropy(linear(patches.mean(1)), labels)
            loss.backward()

        head_train = _count(train_step)
        with torch.no_grad():
            linear.eval()
            head_eval = _count(lambda: (attentive(patches), linear(patches.mean(1))))
    head_params = sum(p.numel() for p in (*attentive.parameters(), *linear.parameters()))
    encoder_params = sum(p.numel() for p in tower.parameters())
    per_gpu = request.global_batch // request.gpus
    tokens = patches.shape[1] + config.num_registers
    # one block's transient at the per-GPU batch (fp32 upper bound: residual, norm, q/k/v/gate, SwiGLU's 3 x ffn),
    # the patch features the heads keep for their backward, and the attentive head's own activations
    block = per_gpu * tokens * (6 * config.width + 3 * config.ffn_hidden) * 4
    heads = per_gpu * tokens * config.width * 4 * 4
    memory = encoder_params * 4 + head_params * 16 + block + heads
    return ProbePlan(request, encoder_params, head_params, encoder, head_train, head_eval, memory)


def format_probe_plan(plan: ProbePlan) -> str:
    r = plan.request
    per_gpu = r.global_batch // r.gpus
    fits = plan.memory_bytes <= usable_bytes(r.gpu.memory_gib)
    peak = r.gpu.bf16_tflops * 1e12
    lines = [
        f"probe plan: GenLIP {r.arch} frozen at {r.image_size} px, attentive + linear heads, {r.num_classes} classes, "
        f"{r.gpus} x {r.gpu.name}, bf16-mixed",
        f"  encoder {plan.encoder_params / 1e6:,.1f}M params (frozen, fp32 weights), heads {plan.head_params / 1e6:,.2f}M "
        f"(AdamW)",
        f"  images: {r.epochs} epochs x ({r.train_images:,} train + {r.val_images:,} val) = {plan.images:,}",
        f"  FLOPs per image: encoder forward {plan.encoder_flops / 1e9:,.1f} GFLOP + heads forward+backward "
        f"{plan.head_train_flops / 1e9:,.2f} GFLOP (val: forward {plan.head_eval_flops / 1e9:,.2f})",
        f"  total {plan.total_flops:.3g} FLOP",
        f"  compute: {plan.total_flops:.3g} / ({r.gpus} GPUs x {r.gpu.bf16_tflops:g} TFLOP/s x MFU {r.mfu:g}) = "
        f"{plan.compute_hours:,.2f} h ({plan.total_flops / r.epochs / (r.gpus * peak * r.mfu) / 60:,.1f} min an "
        f"epoch; {r.gpus * peak * r.mfu / (plan.encoder_flops + plan.head_train_flops):,.0f} train images/s)",
        f"  decode: {plan.images:,} images / ({r.gpus} GPUs x {r.workers_per_gpu} workers x {r.decode_rate:g} "
        f"images/s) = {plan.decode_hours:,.2f} h  (rate assumed: --decode-rate; gpu_check measures it)",
        f"  memory per GPU at {per_gpu} images (global {r.global_batch}): ~{plan.memory_bytes / 2**30:,.1f} GiB "
        f"{'fits' if fits else 'does NOT fit'} in {r.gpu.memory_gib:g} GiB",
        f"  planned time: {plan.hours:,.2f} h on {r.gpus} GPUs ({plan.hours * r.gpus:,.1f} GPU-hours), "
        f"{'decode' if plan.decode_hours > plan.compute_hours else 'compute'}-bound",
    ]
    if not math.isfinite(plan.hours):
        lines.append("  (no finite estimate)")
    return "\n".join(lines)


__all__ = ["ProbePlan", "ProbeRequest", "format_probe_plan", "plan_probe"]
