"""LM-head cross-entropy that never materialises the full tokens x vocabulary logits.

    python -m pytest tests/models/test_lm_loss.py -q
    python benchmarks/bench_lm_head.py

With the paper's vocabulary (151,936 tokens) the logits of one stage-1 batch are the largest tensor of the step:
B x ~74 text tokens x 151,936 floats, plus the same again for their gradient. `chunked_lm_head_loss` walks the
target tokens in chunks: per chunk it forms the logits, takes the log-sum-exp and the target logit, and computes
that chunk's gradient right away (softmax minus one-hot), folding it into the gradients of the hidden states and
of the head weight. Backward then only scales the stored gradients. Peak extra memory is one chunk of logits
plus one weight-sized gradient, instead of two tokens x vocabulary tensors. Loss and gradients equal the plain
`F.cross_entropy(hidden @ W.T, targets)` (tests check both, in float32).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int):  # type: ignore[override]
        n = hidden.shape[0]
        needs_hidden, needs_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_hidden = torch.empty_like(hidden) if needs_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_weight else None
        loss_sum = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.long, device=hidden.device)
        for start in range(0, n, chunk_size):
            h = hidden[start : start + chunk_size]
            t = targets[start : start + chunk_size]
            logits = (h @ weight.T).float()  # [c, V]: the only vocabulary-sized buffer, reused in place below
            target_logit = logits.gather(1, t[:, None]).squeeze(1)
            correct += (logits.argmax(-1) == t).sum()
            row_max = logits.amax(-1, keepdim=True)
            exp = logits.sub_(row_max).exp_()
            total = exp.sum(-1, keepdim=True)
            loss_sum += (total.log() + row_max).squeeze(1).sub(target_logit).sum()  # log-sum-exp - target
            if needs_hidden or needs_weight:
                # d(sum of losses)/d logits = softmax - one_hot, still in the same buffer
                grad_logits = exp.div_(total)
                grad_logits[torch.arange(len(t), device=t.device), t] -= 1.0
                grad_logits = grad_logits.to(hidden.dtype)
                if needs_hidden:
                    grad_hidden[start : start + chunk_size] = grad_logits @ weight
                if needs_weight:  # accumulate in place: no weight-sized temporary per chunk
                    grad_weight.addmm_(grad_logits.T.float(), h.float())
            del logits, exp  # every alias of the buffer, or it lives on beside the next chunk's
            grad_logits = None
        ctx.save_for_backward(grad_hidden if needs_hidden else None, grad_weight if needs_weight else None)
        ctx.num_tokens, ctx.weight_dtype = n, weight.dtype
        ctx.mark_non_differentiable(correct)
        return loss_sum / max(n, 1), correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_correct: Tensor | None):  # type: ignore[override]
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / max(ctx.num_tokens, 1)
        # in place: the stored gradients are used once, and a weight-sized copy is what chunking saves
        dh = grad_hidden.mul_(scale.to(grad_hidden.dtype)) if grad_hidden is not None else None
        dw = grad_weight.mul_(scale).to(ctx.weight_dtype) if grad_weight is not None else None
        return dh, dw, None, None


def chunked_lm_head_loss(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 1024
                         ) -> tuple[Tensor, Tensor]:
    """(mean cross-entropy of `hidden [T, d] @ weight[V, d].T` against `targets [T]`, number of argmax hits).

    Equal to the plain computation; memory O(chunk_size x V + V x d) instead of O(T x V).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return _ChunkedLinearCrossEntropy.apply(hidden, weight, targets, chunk_size)


def lm_head_loss(hidden: Tensor, weight: Tensor, targets: Tensor, chunk_size: int = 0) -> tuple[Tensor, Tensor]:
    """Mean next-token cross-entropy and argmax hits; `chunk_size` 0 = plain logits (fastest for small vocabularies)."""
    if chunk_size:
        return chunked_lm_head_loss(hidden, weight, targets, chunk_size)
    logits = F.linear(hidden, weight)
    return F.cross_entropy(logits.float(), targets), (logits.argmax(-1) == targets).sum()


def next_token_loss(
    text_hidden: Tensor, weight: Tensor, input_ids: Tensor, loss_mask: Tensor, chunk_size: int = 0,
    project: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """(mean cross-entropy, number of targets, number correct) of the tokens where loss_mask is True, each
    predicted from the hidden state one position earlier (text_hidden is aligned with input_ids). Only the
    positions that predict a target go through the LM head (and through `project`, a text bottleneck's output
    projection, applied before it)."""
    targets_mask = loss_mask[:, 1:]
    targets = input_ids[:, 1:][targets_mask]
    hidden = text_hidden[:, :-1][targets_mask]
    if project is not None:
        hidden = project(hidden)
    loss, num_correct = lm_head_loss(hidden, weight, targets, chunk_size)
    return loss, targets.new_tensor(targets.numel()), num_correct
