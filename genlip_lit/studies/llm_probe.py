"""How well does a frozen vision encoder suit a language model? (the paper's Fig. 1 check; `genlip llm-probe`)

    genlip llm-probe --encoder encoders/genlip --encoder encoders/clip --lm smollm2 --output runs/llm_probe

Each encoder feeds a frozen causal LM through a 2-layer MLP projector (Linear(width, d_lm), GELU,
Linear(d_lm, d_lm)), LLaVA-style: the LM reads [BOS ; projected patch features ; prompt ; caption] and is
scored by next-token cross-entropy on the caption (and EOS) only. Only the projector trains, for the same
steps, on the same samples in the same order from the same seed for every encoder; the held-out caption
perplexity is PPL1. `--tune-lm` then continues for as many steps with the projector and a fresh copy of the LM
both trained: PPL2. A "no image" row trains the same projector on all-zero features (a learned constant prefix
of the same length), so the table shows what each encoder's features add over captions alone.

Encoder features are computed once per encoder (frozen), at the encoder's own preprocessing (image size,
mean/std from its config.json). Data: litdata shards from `genlip optimize` (`train/` and `val/`, fields image
and caption) or, by default, the embedded synthetic scenes of the quickstart (the same generated cache).
Writes OUT/table.md, OUT/table.csv and OUT/result.json.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from genlip_lit.console.progress import progress
from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.data import resolve_device
from genlip_lit.models.schedule import warmup_cosine
from genlip_lit.studies.llm_loading import (
    LMSource,
    data_root,
    encode_images,
    lm_description,
    load_caption_data,
    load_lm,
    resolve_lm,
    step_order,
)

log = logging.getLogger(__name__)

NO_IMAGE = "no image"
# Sized for 3 encoders + the no-image row with SmolLM2-135M on 2 CPU cores: a step of 8 captions costs about
# 7.5 CPU-seconds (1 thread), scoring a held-out caption 0.4; about 13 minutes in all on an idle machine with
# 2 threads. lr 1e-3 is LLaVA's projector pre-training rate; 2e-3 made the no-image prefix diverge.
DEFAULT_STEPS, DEFAULT_BATCH, DEFAULT_LR, DEFAULT_NUM_EVAL = 40, 8, 1e-3, 128


# ---------------------------------------------------------------------------------------------------- model
class Projector(nn.Module):
    """Vision features -> LM input embeddings: Linear(width, d_lm), GELU, Linear(d_lm, d_lm)."""

    def __init__(self, width: int, d_lm: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(width, d_lm), nn.GELU(), nn.Linear(d_lm, d_lm))

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


@dataclasses.dataclass
class TextBatch:
    ids: Tensor  # [B, T] prompt + caption + EOS, right-padded with 0
    targets: Tensor  # [B, T] bool: caption and EOS positions (the scored ones)


class CaptionText:
    """Captions in the LM's own tokenizer: prompt (not scored) + caption + EOS (scored), no special tokens."""

    def __init__(self, tokenizer: Any, prompt: str = "", max_caption_tokens: int = 64) -> None:
        self.prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
        self.bos = getattr(tokenizer, "bos_token_id", None)
        self.eos = getattr(tokenizer, "eos_token_id", None)
        self.tokenizer = tokenizer
        self.max_caption_tokens = max_caption_tokens

    def encode(self, captions: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(list(captions), add_special_tokens=False)["input_ids"]
        tail = [self.eos] if self.eos is not None else []
        return [list(ids)[: self.max_caption_tokens] + tail for ids in encoded]

    def batch(self, caption_ids: list[list[int]]) -> TextBatch:
        p = len(self.prompt_ids)
        length = p + max(len(c) for c in caption_ids)
        ids = torch.zeros(len(caption_ids), length, dtype=torch.long)
        targets = torch.zeros(len(caption_ids), length, dtype=torch.bool)
        for row, cap in enumerate(caption_ids):
            ids[row, : p + len(cap)] = torch.tensor(self.prompt_ids + cap, dtype=torch.long)
            targets[row, p : p + len(cap)] = True
        return TextBatch(ids, targets)


def caption_nll(
    lm: Any, projector: Projector, features: Tensor, text: TextBatch, bos: int | None
) -> tuple[Tensor, int]:
    """Summed next-token NLL over the scored caption tokens, and their count.

    Padding sits at the right end of each row, after every scored token: causal attention never lets a scored
    position see it, so no attention mask is needed. Logits are computed only where text is predicted.
    """
    embed = lm.get_input_embeddings()
    parts = [projector(features)]
    if bos is not None:
        first = torch.full((features.shape[0], 1), bos, dtype=torch.long, device=features.device)
        parts.insert(0, embed(first))
    t = text.ids.shape[1]
    inputs = torch.cat([*parts, embed(text.ids)], dim=1)
    logits = lm(inputs_embeds=inputs, use_cache=False, logits_to_keep=t + 1).logits[:, :-1]
    nll = nn.functional.cross_entropy(logits[text.targets].float(), text.ids[text.targets], reduction="sum")
    return nll, int(text.targets.sum())


# ---------------------------------------------------------------------------------------------------- runs
@dataclasses.dataclass
class ProbeSettings:
    steps: int
    batch_size: int
    lr: float
    lm_lr: float
    num_eval: int
    seed: int
    tune_lm: bool
    eval_batch_size: int = 32


def _train(lm: Any, projector: Projector, params: list[dict[str, Any]], features: Tensor,
           caption_ids: list[list[int]], text: CaptionText, order: list[np.ndarray], device: torch.device,
           label: str) -> list[float]:
    optimizer = torch.optim.AdamW(params, weight_decay=0.0)
    # linear warmup over the first 10% of steps, then cosine decay to 10% of the peak
    warmup = max(1, len(order) // 10)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, len(order), warmup, 0.1))
    trained = [p for group in params for p in group["params"]]
    losses: list[float] = []
    every = max(1, len(order) // 5)
    with progress(total=len(order), description=label, unit="steps") as bar:
        for idx in order:
            batch = text.batch([caption_ids[i] for i in idx])
            nll, count = caption_nll(lm, projector, features[torch.as_tensor(idx)].to(device),
                                     TextBatch(batch.ids.to(device), batch.targets.to(device)), text.bos)
            loss = nll / max(count, 1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trained, 1.0)
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(f"loss {np.mean(losses[-every:]):.3f}")
            bar.advance()
    return losses


@torch.no_grad()
def perplexity(lm: Any, projector: Projector, features: Tensor, caption_ids: list[list[int]],
               text: CaptionText, device: torch.device, batch_size: int = 32) -> float:
    """exp(mean NLL per scored caption token) over the held-out samples."""
    total, count = 0.0, 0
    for start in range(0, len(caption_ids), batch_size):
        batch = text.batch(caption_ids[start : start + batch_size])
        nll, n = caption_nll(lm, projector, features[start : start + batch_size].to(device),
                             TextBatch(batch.ids.to(device), batch.targets.to(device)), text.bos)
        total, count = total + float(nll), count + n
    return math.exp(total / max(count, 1))


def _curve_summary(losses: list[float]) -> dict[str, Any]:
    k = max(1, len(losses) // 10)
    return {"start": float(np.mean(losses[:k])), "end": float(np.mean(losses[-k:])), "window": k,
            "curve": [round(v, 4) for v in losses]}


def probe_one(name: str, lm: Any, train_feats: Tensor, eval_feats: Tensor, train_ids: list[list[int]],
              eval_ids: list[list[int]], text: CaptionText, order: list[np.ndarray], settings: ProbeSettings,
              device: torch.device) -> dict[str, Any]:
    """Projector-only training -> PPL1; with `tune_lm`, projector + a fresh LM copy -> PPL2."""
    start = time.perf_counter()
    torch.manual_seed(settings.seed)  # same projector initialisation for every encoder of a given width
    projector = Projector(train_feats.shape[-1], lm.get_input_embeddings().embedding_dim).to(device)
    losses = _train(lm, projector, [{"params": list(projector.parameters()), "lr": settings.lr}], train_feats,
                    train_ids, text, order, device, f"{name} (projector)")
    result: dict[str, Any] = {
        "ppl1": perplexity(lm, projector, eval_feats, eval_ids, text, device, settings.eval_batch_size),
        "train_loss": _curve_summary(losses),
    }
    if settings.tune_lm:
        tuned = copy.deepcopy(lm)  # fresh for every encoder: the shared LM stays frozen and untouched
        tuned.requires_grad_(True)
        params = [{"params": list(projector.parameters()), "lr": settings.lr},
                  {"params": list(tuned.parameters()), "lr": settings.lm_lr}]
        losses2 = _train(tuned, projector, params, train_feats, train_ids, text, order, device,
                         f"{name} (+LM)")
        result["ppl2"] = perplexity(tuned, projector, eval_feats, eval_ids, text, device,
                                    settings.eval_batch_size)
        result["tune_loss"] = _curve_summary(losses2)
        del tuned
    result["projector_params"] = sum(p.numel() for p in projector.parameters())
    result["train_eval_seconds"] = time.perf_counter() - start
    return result


def _unique_names(dirs: list[str]) -> list[str]:
    names = []
    for d in dirs:
        base = os.path.basename(os.path.normpath(d)) or d
        name, k = base, 2
        while name in names or name == NO_IMAGE:
            name, k = f"{base}_{k}", k + 1
        names.append(name)
    return names


def run_probe(encoder_dirs: list[str], lm_spec: str, output: str, data: str | None, settings: ProbeSettings,
              prompt: str = "", max_caption_tokens: int = 64, device: str | torch.device = "auto") -> dict[str, Any]:
    """The whole probe: every encoder and the no-image baseline under one budget; writes the reports."""
    from genlip_lit.encoders.export import load_vision_encoder

    if settings.steps < 1 or settings.batch_size < 1 or settings.num_eval < 1:
        raise GenLIPUserError("--steps, --batch-size and --num-eval must be positive")
    dev = resolve_device(device)
    # cheap checks first: every encoder directory, the data and the LM path, before the slow loads
    encoders = [load_vision_encoder(d) for d in encoder_dirs]
    source: LMSource = resolve_lm(lm_spec)
    root = data_root(data)
    begin = time.perf_counter()
    lm, tokenizer = load_lm(source)
    lm.to(dev)
    load_seconds = time.perf_counter() - begin
    log.info("LM %s: %.1fM parameters (%.0f s to load)", source.path,
             sum(p.numel() for p in lm.parameters()) / 1e6, load_seconds)
    num_train = settings.steps * settings.batch_size
    train, held_out = load_caption_data(root, num_train, settings.num_eval, settings.seed)
    text = CaptionText(tokenizer, prompt, max_caption_tokens)
    train_ids, eval_ids = text.encode(train.captions), text.encode(held_out.captions)
    order = step_order(len(train_ids), settings.steps, settings.batch_size, settings.seed)

    with progress(total=len(encoders) + 1, description="llm-probe", unit="encoders") as run:
        rows = _probe_all(encoder_dirs, encoders, lm, train, held_out, train_ids, eval_ids, text, order, settings,
                          dev, run)
    result = {
        "lm": {**lm_description(lm, source), "load_seconds": load_seconds},
        "data": {"root": root, "synthetic": data is None, "train_samples": len(train.images),
                 "eval_samples": len(held_out.images), "skipped": train.skipped + held_out.skipped,
                 "eval_caption_tokens": sum(len(c) for c in eval_ids), "prompt": prompt},
        "settings": dataclasses.asdict(settings),
        "rows": rows,
        "seconds": time.perf_counter() - begin,
    }
    write_reports(result, output)
    return result


def _probe_all(encoder_dirs: list[str], encoders: list[Any], lm: Any, train: Any, held_out: Any,
               train_ids: list[list[int]], eval_ids: list[list[int]], text: CaptionText, order: list[np.ndarray],
               settings: ProbeSettings, dev: torch.device, run: Any) -> list[dict[str, Any]]:
    """The rows of the table: the no-image baseline first, then every encoder (`run` counts encoders done)."""
    rows: list[dict[str, Any]] = []
    names = _unique_names(encoder_dirs)
    for name, directory, encoder in zip(names, encoder_dirs, encoders):
        run.set_postfix(name)
        start, cpu_start = time.perf_counter(), time.process_time()
        encoder.to(dev)
        train_feats = encode_images(encoder, train.images, dev)
        eval_feats = encode_images(encoder, held_out.images, dev)
        feature_seconds = time.perf_counter() - start
        count = len(train.images) + len(held_out.images)
        log.info("%s: features %s for %d images (%.1f s)", name, tuple(train_feats.shape[1:]), count,
                 feature_seconds)
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as fh:
            objective = json.load(fh).get("source", {}).get("objective", "?")
        row = {"name": name, "dir": os.path.abspath(directory), "objective": objective,
               "vision_params": sum(p.numel() for p in encoder.parameters()),
               "width": int(train_feats.shape[-1]), "num_patches": int(train_feats.shape[1]),
               "image_size": int(encoder.preprocessing.get("image_size", 0))}
        row.update(probe_one(name, lm, train_feats, eval_feats, train_ids, eval_ids, text, order, settings,
                             dev))
        row["seconds"] = time.perf_counter() - start
        row["cpu_seconds"] = time.process_time() - cpu_start  # all threads: compare runs on a busy machine
        row["feature_seconds"] = feature_seconds
        rows.append(row)
        encoder.cpu()
        run.advance()
    # no image: all-zero features shaped like the first encoder's, i.e. a learned constant prefix
    run.set_postfix(NO_IMAGE)
    start, cpu_start = time.perf_counter(), time.process_time()
    m, w = rows[0]["num_patches"], rows[0]["width"]
    baseline = {"name": NO_IMAGE, "dir": None, "objective": "-", "vision_params": 0, "width": w,
                "num_patches": m, "image_size": None}
    zeros_train, zeros_eval = torch.zeros(len(train_ids), m, w), torch.zeros(len(eval_ids), m, w)
    baseline.update(probe_one(NO_IMAGE, lm, zeros_train, zeros_eval, train_ids, eval_ids, text, order,
                              settings, dev))
    baseline["seconds"] = time.perf_counter() - start
    baseline["cpu_seconds"] = time.process_time() - cpu_start
    rows.insert(0, baseline)
    run.advance()
    return rows


# ---------------------------------------------------------------------------------------------------- reports
def table(result: dict[str, Any]) -> tuple[list[str], list[list[str]], list[list[Any]]]:
    """Header, markdown rows and csv rows; PPL change is relative to the no-image row."""
    tune = result["settings"]["tune_lm"]
    header = ["encoder", "objective", "vision params", "width", "patches", "PPL1", "PPL1 vs no image"]
    header += ["PPL2", "PPL2 vs no image"] if tune else []
    header += ["train loss start -> end", "seconds"]
    base = result["rows"][0]
    shown, raw = [], []
    for r in result["rows"]:
        rel = [(r[k] / base[k] - 1) for k in (["ppl1", "ppl2"] if tune else ["ppl1"])]
        params = "-" if not r["vision_params"] else f"{r['vision_params'] / 1e6:.2f}M"
        cells = [r["name"], r["objective"], params, str(r["width"]), str(r["num_patches"]),
                 f"{r['ppl1']:.3f}", "-" if r is base else f"{100 * rel[0]:+.1f}%"]
        values: list[Any] = [r["name"], r["objective"], r["vision_params"], r["width"], r["num_patches"],
                             round(r["ppl1"], 5), "" if r is base else round(rel[0], 5)]
        if tune:
            cells += [f"{r['ppl2']:.3f}", "-" if r is base else f"{100 * rel[1]:+.1f}%"]
            values += [round(r["ppl2"], 5), "" if r is base else round(rel[1], 5)]
        loss = r["train_loss"]
        cells += [f"{loss['start']:.3f} -> {loss['end']:.3f}", f"{r['seconds']:.0f}"]
        values += [round(loss["start"], 5), round(loss["end"], 5), round(r["seconds"], 1)]
        shown.append(cells)
        raw.append(values)
    csv_header = header[:-2] + ["train loss start", "train loss end", "seconds"]
    return header, shown, [csv_header, *raw]


def write_reports(result: dict[str, Any], output: str) -> str:
    from genlip_lit.console.tables import write_table
    from genlip_lit.storage.paths import write_json

    header, shown, raw = table(result)
    s = result["settings"]
    data = result["data"]
    note = (f"LM {result['lm']['path']} ({result['lm']['params'] / 1e6:.1f}M, frozen for PPL1); "
            f"{s['steps']} steps of {s['batch_size']} ({data['train_samples']} distinct samples), "
            f"projector lr {s['lr']}, seed {s['seed']}; perplexity per caption token over "
            f"{data['eval_samples']} held-out captions ({data['eval_caption_tokens']} tokens).")
    md = write_table(output, header, shown, raw[1:], csv_header=raw[0], footer=["", note])
    write_json(os.path.join(output, "result.json"), result, indent=1)
    return md + "\n\n" + note

