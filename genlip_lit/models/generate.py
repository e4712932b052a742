"""Caption generation with a KV cache, and log-likelihood scoring of given captions.

    python -m pytest tests/models/test_generate.py -q

Generation prefills [patches ; BOS + prompt] once, then decodes one token per step attending to the cache.
`use_cache=False` recomputes the whole sequence every step: the reference the cached path must equal.
The functions take a `GenLIP` (models/transformer.py) without importing it: the transformer calls them from its
own `generate` / `score` methods, so the import goes one way only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from genlip_lit.models.attention import KVCache


@dataclass
class GenerationOutput:
    tokens: Tensor  # [B, T] generated ids; positions after a sequence's EOS hold eos_id
    lengths: Tensor  # [B] tokens generated up to and including EOS (or T if it never ended)
    logits: Tensor | None = None  # [B, T, V] logits that produced each token, when requested


def sample_next(logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Greedy when temperature <= 0, else temperature + nucleus (top-p) sampling. logits: [B, V]."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the top token).
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(
    model: nn.Module,
    pixel_values: Tensor,
    prompt_ids: Tensor | list[int],
    max_new_tokens: int,
    eos_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    use_cache: bool = True,
    return_logits: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """Generate up to max_new_tokens per image after `prompt_ids` (BOS + prompt, shared by the batch)."""
    b = pixel_values.shape[0]
    device = pixel_values.device
    prompt = batched_prompt(prompt_ids, b, device)
    cache = None
    if use_cache:
        num_patches = (pixel_values.shape[2] // model.cfg.patch_size) * (pixel_values.shape[3] // model.cfg.patch_size)
        total = model.cfg.num_registers + num_patches + prompt.shape[1] + max_new_tokens
        dtype = next(model.parameters()).dtype
        cache = KVCache(len(model.blocks), b, model.cfg.num_heads, total, model.cfg.head_dim, dtype, device)

    def next_logits(step: int, step_input: Tensor, text: Tensor) -> Tensor:
        if cache is not None:
            out = model.forward_features(pixel_values if step == 0 else None, step_input, cache)
        else:
            out = model.forward_features(pixel_values, text)
        return model.logits(out.hidden[:, -1])

    return decode_loop(next_logits, prompt, max_new_tokens, eos_id, temperature, top_p, return_logits, generator)


def batched_prompt(prompt_ids: Tensor | list[int], batch_size: int, device: torch.device) -> Tensor:
    """[B, L] prompt ids: one shared prompt ([L] or a list) is repeated for every image."""
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=device)
    return prompt.expand(batch_size, -1) if prompt.dim() == 1 else prompt


def decode_loop(
    next_logits: Callable[[int, Tensor, Tensor], Tensor],
    prompt: Tensor,
    max_new_tokens: int,
    eos_id: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    return_logits: bool = False,
    generator: torch.Generator | None = None,
) -> GenerationOutput:
    """The token-by-token loop shared by every generative model.

    `next_logits(step, step_input, text)` returns the [B, V] logits of the next token, given the step number,
    the tokens fed at this step (the prompt at step 0, then the last token) and the whole text so far; a model
    with a cache uses the first two, one that recomputes uses the last. Finished sequences are padded with EOS.
    """
    b, device = prompt.shape[0], prompt.device
    tokens = torch.full((b, max_new_tokens), eos_id, dtype=torch.long, device=device)
    lengths = torch.full((b,), max_new_tokens, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    all_logits = [] if return_logits else None
    text = prompt
    step_input = prompt
    for step in range(max_new_tokens):
        logits = next_logits(step, step_input, text).float()
        nxt = sample_next(logits, temperature, top_p, generator)
        nxt = torch.where(done, torch.full_like(nxt, eos_id), nxt)
        tokens[:, step] = nxt
        if all_logits is not None:
            all_logits.append(logits)
        newly_done = (~done) & (nxt == eos_id)
        lengths[newly_done] = step + 1
        done |= newly_done
        if bool(done.all()):
            tokens = tokens[:, : step + 1]
            break
        step_input = nxt[:, None]
        text = torch.cat([text, step_input], dim=1)
    logits_out = torch.stack(all_logits, dim=1) if all_logits is not None else None
    return GenerationOutput(tokens, lengths, logits_out)


def target_log_likelihood(logits: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Per-sample summed log-probability of the targets: logits [B, L-1, V] at positions 0..L-2 predict
    input_ids[:, 1:], counted where loss_mask[:, 1:] is True."""
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * loss_mask[:, 1:]).sum(-1)


@torch.no_grad()
def score(model: nn.Module, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample summed log-likelihood of the target tokens (loss_mask True) and their count.

    Used for zero-shot classification by caption likelihood: higher is a better match.
    """
    logits = model.text_logits(pixel_values, input_ids)[:, :-1]
    return target_log_likelihood(logits, input_ids, loss_mask), loss_mask[:, 1:].sum(-1)


@torch.no_grad()
def score_texts(model: nn.Module, pixel_values: Tensor, input_ids: Tensor, loss_mask: Tensor) -> Tensor:
    """Summed log-likelihood of each of T texts (`input_ids`/`loss_mask` [T, L]) for each image: [B, T].

    The image is encoded once into a KV cache; every text then runs only its own L tokens against the cached
    image keys (the cache is rewound to the image after each text), so T texts cost about one image forward
    plus T short text passes instead of T full forwards. Equal to `score` on each (image, text) pair.
    """
    b = pixel_values.shape[0]
    device = pixel_values.device
    num_patches = (pixel_values.shape[2] // model.cfg.patch_size) * (pixel_values.shape[3] // model.cfg.patch_size)
    prefix = model.cfg.num_registers + num_patches
    dtype = next(model.parameters()).dtype
    cache = KVCache(len(model.blocks), b, model.cfg.num_heads, prefix + input_ids.shape[1], model.cfg.head_dim,
                    dtype, device)
    model.forward_features(pixel_values, None, cache)
    scores = torch.empty(b, input_ids.shape[0], device=device)
    for j in range(input_ids.shape[0]):
        cache.length = prefix  # rewind: the image keys stay, the previous text's are overwritten
        ids = input_ids[j : j + 1].to(device).expand(b, -1)
        hidden = model.forward_features(None, ids, cache).hidden
        logits = model.logits(hidden[:, :-1])
        scores[:, j] = target_log_likelihood(logits, ids, loss_mask[j : j + 1].to(device))
    return scores
