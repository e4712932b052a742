"""One cell of `genlip eval-res`: every metric of one checkpoint at one input resolution (paper Fig. 5).

    genlip eval-res --ckpt runs/stage1 --ckpt runs/stage2 --resolutions 64 96 128 native --output runs/eval_res

Per checkpoint and resolution: greedy captions scored with CIDEr-D and BLEU-4 against the true caption; the OCR
exact match (the word the caption says is written vs. the drawn word); a linear probe of the scene class on
mean-pooled features (and, with `attentive_epochs`, an attentive probe at the square sizes), fitted on another
held-out stream at the same resolution; the patch readout where the label maps still match the patch grid
(native inputs that were not resized). The same metric functions as the evaluation callbacks (`run_probes`,
`caption_scores`, `readout`). Scenes, resolutions and reports: `resolution_io.py`; the command:
`commands/eval_res.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from genlip_lit.data.synthetic import Scene
from genlip_lit.eval.data import Vocabulary
from genlip_lit.studies.resolution_io import METRICS, PreparedScenes, Resolution, ocr_exact_match


@dataclass
class CellOptions:
    """How one cell is evaluated (the command's options)."""

    batch_size: int = 50
    max_new_tokens: int | None = None  # None: the model's own caption budget
    examples: int = 3  # captions kept per cell
    attentive_epochs: int = 0  # 0: linear probe only
    readout_k: int = 5
    patch_size: int = 8  # the scenes' label-map patch


# ---------------------------------------------------------------------------------------------- one cell
def model_patch_size(module: Any) -> int | None:
    """The patch size the module's data settings name (None if it names none)."""
    settings = getattr(module, "data_settings", None)
    return settings().get("patch_size") if callable(settings) else None


def evaluate_cell(
    module: Any,
    norm: Callable[[torch.Tensor], torch.Tensor],
    res: Resolution,
    scenes: list[Scene],
    evals: PreparedScenes,
    probes: PreparedScenes,
    opts: CellOptions,
) -> dict[str, Any]:
    """All metrics of one checkpoint at one resolution (NaN where one does not apply, with a note why).

    `evals` are `scenes` at this resolution, `probes` the probe's training scenes; `norm` normalizes uint8
    pixels the checkpoint's way and moves them to its device.
    """
    from genlip_lit.eval.caption_metrics import caption_scores
    from genlip_lit.eval.probes import run_probes
    from genlip_lit.eval.readout import readout

    vocabulary = Vocabulary.synthetic()

    device = module.device
    start = time.perf_counter()
    out: dict[str, Any] = {key: float("nan") for _, key, _ in METRICS}
    notes: list[str] = []

    # 1-2. captions and the word they say is written
    if module.is_generative:
        generated: list[str] = [""] * len(scenes)
        for idx, x in evals.batches(opts.batch_size):
            for i, caption in zip(idx, module.generate_captions(norm(x), opts.max_new_tokens)):
                generated[i] = caption
        scores = caption_scores(generated, [[s.caption] for s in scenes])
        out["cider"], out["bleu4"] = scores["cider"], scores["bleu4"]
        out["ocr_em"], out["ocr_scenes"] = ocr_exact_match(generated, [s.word for s in scenes])
        if out["ocr_scenes"] == 0:
            notes.append("no evaluation scene has a word: OCR exact match n/a")
        out["examples"] = [{"reference": s.caption, "generated": g}
                           for s, g in zip(scenes, generated[: opts.examples])]
    else:
        notes.append(f"{type(module).__name__} does not generate captions: caption and OCR columns n/a")

    # 3. probes of the scene class on frozen features
    def pairs(prepared: PreparedScenes) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return ((norm(x), prepared.labels[idx]) for idx, x in prepared.batches(opts.batch_size))

    num_classes = len(vocabulary.class_names or [])
    attentive = opts.attentive_epochs > 0 and probes.uniform and evals.uniform
    results = run_probes(module, pairs(probes), pairs(evals), num_classes, device=device, attentive=attentive,
                         attentive_kwargs={"epochs": opts.attentive_epochs} if attentive else None)
    if opts.attentive_epochs > 0 and not attentive:
        notes.append("attentive probe n/a: inputs of different sizes give patch sequences of unequal length")
    out["linear_top1"] = results["linear"].top1
    if "attentive" in results:
        out["attentive_top1"] = results["attentive"].top1
    out["probe_chance"] = results["linear"].chance
    out["probes"] = {name: r.to_dict() for name, r in results.items()}

    # 4. patch readout where the label maps still describe the patch grid
    kept = [i for i, k in enumerate(evals.kept_size) if k]
    model_patch, scene_patch = model_patch_size(module), opts.patch_size
    if res.side is not None:
        notes.append("readout n/a: squashed inputs no longer match the per-patch label maps")
    elif model_patch != scene_patch:
        notes.append(f"readout n/a: the model's patch size {model_patch} is not the label maps' {scene_patch}")
    elif not kept:
        notes.append("readout n/a: every native input was resized (see --min-patches/--max-patches)")
    else:
        words = vocabulary.words or []
        try:
            scored = [(idx, module.patch_word_scores(norm(x), words).float().cpu())
                      for idx, x in evals.batches(opts.batch_size, only=kept)]
        except NotImplementedError as err:
            notes.append(f"readout n/a: {err}")
        else:
            # every object patch of every image as one row: sizes differ, readout() only needs matching order
            flat = torch.cat([s.reshape(-1, s.shape[-1]) for _, s in scored])[None]
            order = [i for idx, _ in scored for i in idx]
            shape = torch.cat([torch.from_numpy(scenes[i].patch_shape).reshape(-1) for i in order])
            color = torch.cat([torch.from_numpy(scenes[i].patch_color).reshape(-1) for i in order])
            maps = {"shape": shape[None, None], "color": color[None, None]}
            r = readout(flat, words, maps, vocabulary.patch_label_words, k=opts.readout_k)
            out.update(readout=r.accuracy, readout_chance_permuted=r.chance_permuted,
                       readout_chance_uniform=r.chance_uniform, readout_patches=r.num_patches)
            if len(kept) < len(scenes):
                notes.append(f"readout on the {len(kept)} of {len(scenes)} scenes not resized")
    out["notes"] = notes
    out["seconds"] = time.perf_counter() - start
    return out
