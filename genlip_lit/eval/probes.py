"""Frozen-feature probes: how much class information an encoder's features hold, read by a small classifier.

    results = run_probes(module, train_batches, test_batches, num_classes=10, budget=5000, baselines=True)
    print(results["linear"].top1, results["attentive"].top1, results["pixels_linear"].top1)

An encoder is judged by what a cheap classifier trained on its FROZEN features reaches on held-out images:

* `linear_probe`: multinomial logistic regression on the pooled vector (mean of patches for GenLIP, which has
  no [CLS]), features standardized with train statistics, trained full-batch with L-BFGS. The L2 strength is
  picked by a small sweep on a stratified slice of train, never on the test set.
* `attentive_probe`: the protocol for encoders without [CLS] (V-JEPA, AIM, GenLIP): a learned query token
  cross-attends to the patch features (LayerNorm, multi-head attention), then a linear classifier; AdamW with
  warmup + cosine for a fixed number of epochs. Mean pooling weighs every patch equally, so an encoder whose
  class evidence sits in a few patches looks worse under the linear probe than it is; attention can find them.

A number alone says little, so `run_probes(..., baselines=True)` adds two rows from the same images: the linear
probe on raw pixels averaged to the encoder's patch grid (what no encoder at all gives) and the same probes on
the same architecture at a seeded random init (what training added). Both are seeded and deterministic (same
inputs and seed -> same top-1), and report the top-1 of the FINAL model: no early stopping or selection on the
test set. Features come from `features.py` (one pass, no grad, eval mode); plain torch, no Lightning.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlip_lit.console.progress import progress
from genlip_lit.eval.features import DEFAULT_MAX_BYTES, extract_features, extract_many, module_device
from genlip_lit.models.schedule import warmup_cosine

__all__ = ["ProbeResult", "attentive_probe", "extract_features", "linear_probe", "run_probes", "stratified_split"]

log = logging.getLogger(__name__)

DEFAULT_WEIGHT_DECAYS = (1e-4, 1e-3, 1e-2, 1e-1)
ENCODER, PIXELS, RANDOM_INIT = "encoder", "pixels", "random_init"  # the rows of a probe report
MAJORITY = "majority"  # always answering the train split's most frequent class (no features at all)


@dataclass
class ProbeResult:
    """One probe's outcome. `top1` is a fraction in [0, 1] on the test set."""

    top1: float
    num_train: int
    num_test: int
    num_classes: int
    hparams: dict[str, Any] = field(default_factory=dict)  # what was used, incl. the sweep's choice
    seconds: float = 0.0  # probe training + evaluation (feature extraction not included)
    train_top1: float | None = None  # the final model on its own training data (over-/under-fitting hint)

    @property
    def chance(self) -> float:
        """Top-1 of uniform guessing."""
        return 1.0 / max(self.num_classes, 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- helpers
def stratified_split(labels: Sequence[int] | np.ndarray | Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(keep indices, held-out indices): about `fraction` of every class held out, chosen by `seed`.

    Each class draws from its own seeded generator, so adding a class does not reshuffle the others. A class
    with n >= 2 samples gives at least one and keeps at least one; a singleton stays on the keep side.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    y = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels, dtype=np.int64)
    keep, held = [], []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        idx = idx[np.random.default_rng([seed, int(c) & 0xFFFFFFFF]).permutation(len(idx))]
        n_held = round(fraction * len(idx))
        if fraction > 0 and len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        elif len(idx) < 2:
            n_held = 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _check_labels(y: Tensor, n: int, num_classes: int, name: str) -> Tensor:
    y = torch.as_tensor(y).long().reshape(-1)
    if y.shape[0] != n:
        raise ValueError(f"{name}: {y.shape[0]} labels for {n} samples")
    if n == 0:
        raise ValueError(f"{name}: no samples")
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ValueError(f"{name}: labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")
    return y


def _top1(logits: Tensor, y: Tensor) -> float:
    return float((logits.argmax(dim=1) == y).float().mean())


def _standardizer(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and std of the fitting set; a constant dimension divides by 1, not ~0."""
    mean = x.mean(dim=0)
    std = x.std(dim=0, unbiased=False)
    return mean, torch.where(std > 1e-6, std, torch.ones_like(std))


# ---------------------------------------------------------------------------------------------- linear probe
def _fit_logreg(x: Tensor, y: Tensor, num_classes: int, weight_decay: float, max_iter: int) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, mean CE + weight_decay/2 * ||W||^2 (bias free), full-batch L-BFGS.

    Zero init: the problem is convex, so the start changes nothing but the run's exact path, and zeros make it
    independent of any RNG.
    """
    w = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    b = torch.zeros(num_classes, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe",
        tolerance_grad=1e-6, tolerance_change=1e-9,
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + 0.5 * weight_decay * w.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return w.detach(), b.detach()


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    max_iter: int = 200,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Logistic regression on standardized [N, D] features; L2 strength chosen on a held-out slice of train.

    Each candidate in `weight_decays` is fitted on (1 - val_fraction) of train and scored on the rest (top-1,
    ties to the lower validation loss); the winner is refitted on all of train and scored once on test.
    """
    start = time.perf_counter()
    device = torch.device(device or "cpu")
    train_x, test_x = train_x.float().reshape(len(train_x), -1), test_x.float().reshape(len(test_x), -1)
    train_y = _check_labels(train_y, len(train_x), num_classes, "train")
    test_y = _check_labels(test_y, len(test_x), num_classes, "test")
    if not weight_decays:
        raise ValueError("weight_decays must hold at least one value")

    sweep: dict[str, float] = {}
    chosen = float(weight_decays[len(weight_decays) // 2])  # middle value when there is nothing to choose with
    fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    if len(weight_decays) > 1 and len(val_idx) > 0:
        fx, fy = train_x[fit_idx].to(device), train_y[fit_idx].to(device)
        vx, vy = train_x[val_idx].to(device), train_y[val_idx].to(device)
        mean, std = _standardizer(fx)
        fx, vx = (fx - mean) / std, (vx - mean) / std
        best: tuple[float, float] | None = None
        for wd in weight_decays:
            w, b = _fit_logreg(fx, fy, num_classes, float(wd), max_iter)
            logits = vx @ w + b
            acc, loss = _top1(logits, vy), float(F.cross_entropy(logits, vy))
            sweep[repr(float(wd))] = acc
            if best is None or (acc, -loss) > best:
                best, chosen = (acc, -loss), float(wd)

    x, y = train_x.to(device), train_y.to(device)
    mean, std = _standardizer(x)
    w, b = _fit_logreg((x - mean) / std, y, num_classes, chosen, max_iter)
    train_top1 = _top1(((x - mean) / std) @ w + b, y)
    top1 = _top1(((test_x.to(device) - mean) / std) @ w + b, test_y.to(device))
    return ProbeResult(
        top1=top1,
        num_train=len(train_x),
        num_test=len(test_x),
        num_classes=num_classes,
        hparams={
            "weight_decay": chosen,
            "val_top1_by_weight_decay": sweep,
            "val_fraction": val_fraction,
            "max_iter": max_iter,
            "optimizer": "lbfgs",
            "seed": seed,
        },
        seconds=time.perf_counter() - start,
        train_top1=train_top1,
    )


# ---------------------------------------------------------------------------------------------- attentive probe
class AttentivePoolingClassifier(nn.Module):
    """A learned query cross-attends to LayerNorm'ed patch features; LayerNorm + linear head on the result."""

    def __init__(self, dim: int, num_classes: int, num_heads: int) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.head_norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, patches: Tensor) -> Tensor:
        kv = self.norm(patches)
        pooled, _ = self.attn(self.query.expand(patches.shape[0], -1, -1), kv, kv, need_weights=False)
        return self.head(self.head_norm(pooled[:, 0]))


def _default_heads(dim: int, wanted: int = 8) -> int:
    """The largest head count <= `wanted` that divides `dim`."""
    return next(h for h in range(min(wanted, dim), 0, -1) if dim % h == 0)


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor, batch_size: int, device: torch.device) -> Tensor:
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out)


def attentive_probe(
    train_patches: Tensor,
    train_y: Tensor,
    test_patches: Tensor,
    test_y: Tensor,
    num_classes: int,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    warmup_epochs: int = 1,
    num_heads: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Attentive pooling probe on frozen patch features [N, M, D]: AdamW, linear warmup then cosine to zero.

    Seeded: initialization and mini-batch order come from `seed` (the global RNG is left as it was).
    """
    start = time.perf_counter()
    device = torch.device(device or "cpu")
    if train_patches.dim() != 3 or test_patches.dim() != 3 or train_patches.shape[2] != test_patches.shape[2]:
        raise ValueError(
            f"attentive_probe needs [N, M, D] patch features, got {tuple(train_patches.shape)} / {tuple(test_patches.shape)}"
        )
    train_y = _check_labels(train_y, len(train_patches), num_classes, "train")
    test_y = _check_labels(test_y, len(test_patches), num_classes, "test")
    dim = int(train_patches.shape[2])
    heads = num_heads or _default_heads(dim)
    if dim % heads:
        raise ValueError(f"num_heads={heads} does not divide the feature dim {dim}")

    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's RNG
        torch.manual_seed(seed)
        model = AttentivePoolingClassifier(dim, num_classes, heads).to(device)
    order_rng = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_patches) / batch_size)
    total = epochs * steps_per_epoch
    warmup = min(warmup_epochs * steps_per_epoch, max(total - 1, 0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_cosine(s, total, warmup))

    x, y = train_patches.float(), train_y
    with torch.enable_grad():
        for _ in range(epochs):
            model.train()
            for idx in torch.randperm(len(x), generator=order_rng).split(batch_size):
                loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()

    eval_bs = max(batch_size, 256)
    train_top1 = float((_predict(model, x, eval_bs, device) == y).float().mean())
    top1 = float((_predict(model, test_patches.float(), eval_bs, device) == test_y).float().mean())
    return ProbeResult(
        top1=top1,
        num_train=len(train_patches),
        num_test=len(test_patches),
        num_classes=num_classes,
        hparams={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "weight_decay": weight_decay,
            "warmup_epochs": warmup_epochs,
            "num_heads": heads,
            "optimizer": "adamw",
            "seed": seed,
        },
        seconds=time.perf_counter() - start,
        train_top1=train_top1,
    )


def majority_class(train_y: Tensor, test_y: Tensor, num_classes: int) -> ProbeResult:
    """The top-1 of always answering the train split's most frequent class (lowest id on a tie): what a probe
    reaches from the class balance alone, which uniform chance (1 / classes) hides on unbalanced data."""
    train_y, test_y = torch.as_tensor(train_y).long().cpu(), torch.as_tensor(test_y).long().cpu()
    counts = torch.bincount(train_y, minlength=num_classes)
    winner = int(torch.argmax(counts))  # argmax returns the first maximum
    top1 = float((test_y == winner).float().mean()) if len(test_y) else float("nan")
    return ProbeResult(top1, len(train_y), len(test_y), num_classes,
                       hparams={"class": winner, "train_share": float(counts[winner]) / max(1, len(train_y))})


# ---------------------------------------------------------------------------------------------- all at once
def run_probes(
    module: Any,
    train_batches: Iterable[Any],
    test_batches: Iterable[Any],
    num_classes: int | None = None,
    device: torch.device | str | None = None,
    budget: int | None = None,
    *,
    linear_kwargs: dict[str, Any] | None = None,
    attentive_kwargs: dict[str, Any] | None = None,
    attentive: bool = True,
    baselines: bool = False,
    random_init_seed: int = 0,
    max_bytes: int | None = DEFAULT_MAX_BYTES,
) -> dict[str, ProbeResult]:
    """Extract train and test features once (each split bounded by `budget`), then run the probes.

    Returns {"majority", "linear", "attentive"} (without `attentive`: no "attentive"; "majority" is
    `majority_class` of the labels read); with `baselines` also "pixels_linear"
    (raw pixels at the encoder's patch grid) and "random_init_linear" / "random_init_attentive" (the module's
    `fresh_copy(random_init_seed)`, when it has one), all on the same images. `num_classes` None: the largest
    label seen + 1. The linear probe reads the pooled vector: the patch mean, or `encode_pooled` when a module
    defines its own pooling. Probes train on `device` too.
    """
    encoders = {ENCODER: module}
    if baselines and callable(getattr(module, "fresh_copy", None)):
        encoders[RANDOM_INIT] = module.fresh_copy(random_init_seed)
    elif baselines:
        log.info("%s has no fresh_copy(): no random-init baseline", type(module).__name__)
    t0 = time.perf_counter()
    splits = {}
    for name, batches in (("train", train_batches), ("test", test_batches)):
        splits[name] = extract_many(encoders, batches, device, budget, want_patches=attentive, want_pooled=True,
                                    pixels=baselines, max_bytes=max_bytes, description=f"extracting {name} features")
    (train, train_y, train_px), (test, test_y, test_px) = splits["train"], splits["test"]
    log.info("extracted %d train + %d test samples in %.1f s", len(train_y), len(test_y), time.perf_counter() - t0)
    if num_classes is None:
        num_classes = int(max(train_y.max(), test_y.max())) + 1
    probe_device = torch.device(device) if device is not None else module_device(module)
    results: dict[str, ProbeResult] = {MAJORITY: majority_class(train_y, test_y, num_classes)}
    total = len(encoders) * (2 if attentive else 1) + (1 if baselines else 0)
    with progress(total=total, description="fitting probes", unit="probes") as bar:
        for name in encoders:
            prefix = "" if name == ENCODER else f"{name}_"
            tr, te = train[name], test[name]
            bar.set_postfix(f"{prefix}linear")
            results[f"{prefix}linear"] = linear_probe(tr.pooled, train_y, te.pooled, test_y, num_classes,
                                                     device=probe_device, **(linear_kwargs or {}))
            bar.advance()
            if attentive:
                bar.set_postfix(f"{prefix}attentive")
                results[f"{prefix}attentive"] = attentive_probe(tr.patches, train_y, te.patches, test_y,
                                                                num_classes, device=probe_device,
                                                                **(attentive_kwargs or {}))
                bar.advance()
        if baselines:
            assert train_px is not None and test_px is not None
            bar.set_postfix(f"{PIXELS}_linear")
            result = linear_probe(train_px, train_y, test_px, test_y, num_classes, device=probe_device,
                                  **(linear_kwargs or {}))
            result.hparams["features"] = f"pixels averaged per patch ({train_px.shape[1] // 3} patches x 3 channels)"
            results[f"{PIXELS}_linear"] = result
            bar.advance()
        bar.set_postfix("")
    return results


def probe_table(results: dict[str, ProbeResult], class_names: Sequence[str] | None = None
                ) -> tuple[list[str], list[list[str]], list[list[Any]]]:
    """Header, shown rows (percentages) and raw rows (fractions; None where a probe did not run) of a
    `run_probes` result: encoder, random init, raw pixels (linear, attentive), then the two floors that need no
    features: the majority class (the train split's most frequent, on test) and uniform chance (1 / classes),
    each given in both columns."""
    shown, raw = [], []
    for name, label in ((ENCODER, "encoder"), (RANDOM_INIT, "random init"), (PIXELS, "raw pixels (patch-grid means)")):
        prefix = "" if name == ENCODER else f"{name}_"
        if f"{prefix}linear" not in results:
            continue
        linear, attentive = results[f"{prefix}linear"].top1, results.get(f"{prefix}attentive")
        shown.append([label, f"{100 * linear:.1f}%", "-" if attentive is None else f"{100 * attentive.top1:.1f}%"])
        raw.append([label, linear, None if attentive is None else attentive.top1])
    floors = []
    if MAJORITY in results:
        winner = results[MAJORITY].hparams.get("class")
        named = class_names[winner] if class_names and winner is not None and winner < len(class_names) else winner
        floors.append((f"majority class ({named})", results[MAJORITY].top1))
    if "linear" in results:
        floors.append((f"uniform chance (1/{results['linear'].num_classes})", results["linear"].chance))
    for label, value in floors:
        shown.append([label, f"{100 * value:.1f}%", f"{100 * value:.1f}%"])
        raw.append([label, value, value])
    return ["features", "linear probe top-1", "attentive probe top-1"], shown, raw
