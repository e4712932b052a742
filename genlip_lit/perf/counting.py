"""The FLOP counter every figure of this project uses: torch's FlopCounterMode plus the kernels it does not know.

    with flop_counter() as counter: ...; counter.get_total_flops()

Shared by the `Throughput` callback (one real training step) and `genlip plan` (one step on the meta device), so
a planned FLOPs-per-sample and a logged one are the same count. A masked attention counts its full score matrix,
as torch counts the fused kernels.
"""

from __future__ import annotations

import functools

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


class _TotalsOnly:
    """Stands in for FlopCounterMode's module tracker, so every count goes to the total ("Global").

    The tracker hooks each module's backward, and those hooks keep a checkpointed block's recomputed
    activations alive until the whole backward ends: a counted step with activation checkpointing would need
    about the memory of one without (measured on CPU: 33 MiB instead of 15 for a 4-block tiny model).
    """

    parents = ("Global",)

    def __enter__(self) -> _TotalsOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def _backend_key(args: tuple) -> str | None:
    """The dispatch key of the first tensor argument's device ("CPU", "CUDA", "Meta"), None without tensors."""
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta"}.get(arg.device.type)
    return None


@functools.cache
def _run_as_called(mode_class: type) -> type:
    """A subclass of FlopCounterMode's dispatch mode that runs every op with a kernel of its own as called.

    torch's mode decomposes each op it has no formula for (`func.decompose()`), to find matrix products inside
    composite ops. For ops that ALSO have a native kernel (e.g. `silu_backward` on CPU) that runs the math
    decomposition instead of the kernel, which rounds differently: a counted training step then gives other
    gradients (1e-9 relative here) and a run with the Throughput callback diverged from one without. Ops with
    no kernel for the device (composites such as `linear` under inference mode) are still decomposed and counted.
    """

    class AsCalled(mode_class):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            backend = _backend_key(args)
            if (backend is not None and isinstance(func, torch._ops.OpOverload)
                    and func._overloadpacket not in self.counter.flop_registry
                    and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), backend)):
                return func(*args, **(kwargs or {}))
            return super().__torch_dispatch__(func, types, args, kwargs)

    return AsCalled


class _ExactFlopCounterMode(FlopCounterMode):
    """FlopCounterMode whose counted ops compute bit for bit what they compute uncounted (`_run_as_called`)."""

    def __enter__(self) -> _ExactFlopCounterMode:
        super().__enter__()
        mode = getattr(self, "mode", None)  # private (torch 2.2+); tests/callbacks/test_throughput.py checks exactness
        if mode is not None:
            mode.__class__ = _run_as_called(type(mode))
        return self


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode counting totals only, also counting the CPU fused-attention kernels it does not
    know (torch 2.14 counts the CUDA flash / efficient / cuDNN kernels but not
    `_scaled_dot_product_flash_attention_for_cpu`). `get_total_flops()` after the `with` block. Counting does
    not change what is computed: gradients are bitwise those of an uncounted step (`_run_as_called`)."""
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa_flops
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward_flops
    counter = _ExactFlopCounterMode(display=False, custom_mapping=mapping)
    if hasattr(counter, "mod_tracker"):  # private attribute (torch 2.1+); without it, per-module tracking stays
        counter.mod_tracker = _TotalsOnly()
    return counter
