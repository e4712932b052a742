"""Accelerators a run can be planned for: peak dense TFLOP/s per precision and memory, and lookup by device name.

    python -c "from genlip_lit.perf.devices import GPUS; print(GPUS['h100'])"

Peaks are NVIDIA's dense (not 2:4-sparse) tensor-core figures; memory is the total nvidia-smi reports. Lightning's
table (`lightning.fabric.utilities.throughput`) covers more devices, but lists H200 at its sparse 2,000 TFLOP/s
and does not recognise the plain "NVIDIA H200" name, so ours is asked first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GPUSpec:
    name: str
    bf16_tflops: float  # dense bf16 / fp16 tensor-core peak
    fp32_tflops: float  # plain fp32 (torch's default matmul precision "highest": no TF32)
    memory_gib: float

    def peak_tflops(self, precision: str) -> float:
        """Peak for a Lightning precision string: bf16/fp16 compute for "*-mixed" and "*-true" half, else fp32."""
        return self.bf16_tflops if computes_in_half(precision) else self.fp32_tflops


GPUS: dict[str, GPUSpec] = {
    "h100": GPUSpec("H100 SXM 80GB", 989.4, 66.9, 79.6),
    "h200": GPUSpec("H200 SXM 141GB", 989.4, 66.9, 140.4),
    "a100-80": GPUSpec("A100 SXM 80GB", 312.0, 19.5, 80.0),
    "a100-40": GPUSpec("A100 SXM 40GB", 312.0, 19.5, 40.0),
}

# what is not ours to use of a GPU's memory: CUDA context, cuBLAS / NCCL workspaces (GiB)
RESERVED_GIB = 3.0
# share of the rest the caching allocator can fill before fragmentation makes a run fail
ALLOCATOR_HEADROOM = 0.9


def computes_in_half(precision: str) -> bool:
    return str(precision).startswith(("bf16", "16"))


def usable_bytes(memory_gib: float) -> float:
    """What a training step may peak at on a GPU of this size (reserve and allocator headroom taken off)."""
    return max(memory_gib - RESERVED_GIB, 0.0) * ALLOCATOR_HEADROOM * 2**30


def spec_for_device_name(device_name: str) -> GPUSpec | None:
    """Our entry for a CUDA device name as torch reports it (e.g. "NVIDIA H100 80GB HBM3"), or None."""
    chip = device_name.lower()
    if "h200" in chip:
        return GPUS["h200"]
    if "h100" in chip:
        if "pcie" in chip:
            return GPUSpec("H100 PCIe", 756.0, 51.2, 79.6)
        if "nvl" in chip:
            return GPUSpec("H100 NVL", 835.0, 60.0, 93.0)
        return GPUS["h100"]
    if "a100" in chip:
        return GPUS["a100-40"] if "40gb" in chip else GPUS["a100-80"]
    return None


def device_peak_tflops(device: torch.device, precision: str) -> float | None:
    """Peak dense TFLOP/s of `device` for a Lightning precision: ours for H100 / H200 / A100, else Lightning's
    table; None on CPU or for an unknown GPU (no MFU then)."""
    if device.type != "cuda":
        return None
    spec = spec_for_device_name(torch.cuda.get_device_name(device))
    if spec is not None:
        return spec.peak_tflops(precision)
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = torch.bfloat16 if str(precision).startswith("bf16") else (
        torch.float16 if str(precision).startswith("16") else torch.float32)
    flops = get_available_flops(device, dtype)
    return None if flops is None else flops / 1e12
