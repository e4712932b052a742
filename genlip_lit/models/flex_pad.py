"""FlexAttention at any head dim: zero-pad q, k, v to a head dim the compiled kernel takes, cut the output back.

    python -m pytest tests/models/test_flex_pad.py -q

Zero padding is exact: the padded channels add 0 to every q.k score, the softmax scale is passed explicitly as
1/sqrt(the true head dim), and the padded value channels are 0, so the cut output (and its gradient) equals the
unpadded one. So/16's head dim is 72; where a torch version's compiled kernel refuses it, `flex_any_head_dim`
(called by attention.py's `flex_attend` on CUDA) falls back to the padded call for that head dim from then on,
with one warning. `benchmarks/gpu_check.py` reports which of the two a GPU ran.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

# head dims the compiled kernel refused in this process (they run padded from then on)
REFUSED_HEAD_DIMS: set[int] = set()


def padded_head_dim(head_dim: int) -> int:
    """The smallest power of two >= head_dim and >= 16 (what the Triton kernels tile)."""
    return max(16, 1 << (head_dim - 1).bit_length())


def padded_flex(flex: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """`flex(q, k, v, **kwargs)` computed at the padded head dim; equal to the unpadded call."""
    d = q.shape[-1]
    pad = padded_head_dim(d) - d
    if pad == 0:
        return flex(q, k, v, **kwargs)
    kwargs.setdefault("scale", d**-0.5)
    q, k, v = (F.pad(t, (0, pad)) for t in (q, k, v))
    return flex(q, k, v, **kwargs)[..., :d]


def flex_any_head_dim(flex: Callable[..., Tensor], q: Tensor, k: Tensor, v: Tensor, **kwargs) -> Tensor:
    """The plain call, or the padded one for a head dim the kernel refused (remembered for the process)."""
    d = q.shape[-1]
    if d in REFUSED_HEAD_DIMS or padded_head_dim(d) == d:
        return padded_flex(flex, q, k, v, **kwargs)
    try:
        return flex(q, k, v, **kwargs)
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - compile-time refusals come as many exception types
        REFUSED_HEAD_DIMS.add(d)
        warnings.warn(f"FlexAttention refused head dim {d} ({type(exc).__name__}); running it zero-padded to "
                      f"{padded_head_dim(d)} (exact, more attention compute)", stacklevel=2)
        return padded_flex(flex, q, k, v, **kwargs)
