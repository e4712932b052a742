"""The built-in evaluations, each one function plus its registration (`eval/registry.py`): they run during
training (the callbacks made from the registry), after it (`genlip eval`, `genlip probe`) and fill the columns of
`genlip compare`'s table.

    result = probe_evaluation(module, view, budget=2000, test_budget=500)
    print(result.scalars["probe/linear_top1"], result.scalars["probe/pixels_linear_top1"])

Each takes an encoder (the contract of `modules/base.py`) and a data view (`eval/data.py`), runs under
`torch.no_grad()`, and returns an `EvalResult` (scalars, images, tables, text). What the data means (class
names, candidate words, prompt templates, patch label maps) comes from the view's vocabulary, never from a
particular dataset; an evaluation that does not apply (no labels, no captions, a non-generative model) says so in
`details["skipped"]` instead of failing. Every result names the number of held-out images it was scored on
(`details["num_images"]`); reports flag fewer than `MIN_RELIABLE_IMAGES` (50, `eval/result.py`; `result.held_out_note`). Importing this module registers
them, in the order of the comparison table's columns.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from genlip_lit.eval.data import DataModuleView, EvalBatch, EvalView
from genlip_lit.eval.registry import Metric, curve_panels, evaluation, get, metric_columns, registered
from genlip_lit.eval.result import EvalResult, skipped

__all__ = ["caption_evaluation", "curve_panels", "get", "metric_columns", "probe_evaluation", "readout_evaluation",
           "registered", "sink_evaluation", "transfer_evaluation", "zero_shot_evaluation"]


def _preprocessing(view: EvalView, default_size: int | None = None) -> Any:
    """The trainer's data module's image size and normalisation (other data is read at them)."""
    from genlip_lit.data.transforms import DEFAULT_IMAGE_SIZE, Preprocessing

    dm = view.datamodule  # type: ignore[attr-defined]
    return Preprocessing(dm.image_size or default_size or DEFAULT_IMAGE_SIZE, dm.mean, dm.std)


def folder_view(view: EvalView, options: dict[str, Any]) -> EvalView:
    """The probe's data: an ImageFolder tree (`image_folder`) at the data module's preprocessing, else `view`."""
    from genlip_lit.eval.data import ImageFolderView

    folder = options.get("image_folder")
    if folder and isinstance(view, DataModuleView):
        return ImageFolderView(folder, _preprocessing(view), view.device)
    return view


_PROBE_ROWS = ("linear", "attentive", "random_init_linear", "random_init_attentive", "pixels_linear", "majority")


@evaluation(
    "probe", title="linear probe", reads=(("train", "budget"), ("val", "test_budget")),
    then="features read, training the probes", view=folder_view, carries="cached_baselines",
    key=("budget", "image_folder"),
    metrics=[Metric("linear_top1", "linear probe top-1"),
             Metric("attentive_top1", "attentive probe top-1", curve="attentive probe top-1"),
             *(Metric(f"{row}_top1") for row in _PROBE_ROWS[2:]), Metric("chance")],
)
@torch.no_grad()
def probe_evaluation(
    module: Any,
    view: EvalView,
    *,
    budget: int = 2000,
    test_budget: int | None = 500,
    batch_size: int = 64,
    image_folder: str | None = None,
    attentive_epochs: int | None = None,
    baselines: bool = True,
    seed: int = 0,
    cached_baselines: dict[str, Any] | None = None,
) -> EvalResult:
    """Frozen features -> a linear probe on mean-pooled features AND an attentive-pooling probe (top-1 each),
    beside baseline rows on the same images: raw pixels at the encoder's patch grid, the same architecture at
    random init, the majority class and chance.

    Labelled data: the view's (a data module's shards: train split to fit, val split to test; classes from the
    shards' metadata, e.g. the embedded scenes' six shapes or `genlip optimize --classes`), or an ImageFolder
    tree (`image_folder`) at the data module's image size and normalisation. `cached_baselines` (the
    `details["baselines"]` of an earlier result on the same view) are reused instead of recomputed: they do not
    change while the encoder trains (a scheduled probe computes them at its first run).

    Args:
        budget: training images for the probes (the train split)
        test_budget: held-out images they are scored on (the val split); null: the same as budget
        batch_size: images per forward pass
        image_folder: an ImageFolder root (CLASS/*.jpg, its own train/val folders or a seeded split) instead of
            the data module's shards; null: the data module's
        attentive_epochs: epochs of the attentive probe; null: the probe's default
        baselines: also probe raw pixels and the same architecture at random init
        seed: the random-init weights of the baseline
    """
    from genlip_lit.eval.probes import ProbeResult, probe_table, run_probes

    view = folder_view(view, {"image_folder": image_folder})
    test_budget = test_budget or budget
    names = view.class_names
    attentive = {"epochs": attentive_epochs} if attentive_epochs else None
    recompute = baselines and not cached_baselines
    results = run_probes(module, view.labelled("train", budget, batch_size), view.labelled("val", test_budget, batch_size),
                         len(names) if names else None, device=view.device, attentive_kwargs=attentive,
                         baselines=recompute, random_init_seed=seed)
    own = {k: r for k, r in results.items() if k in ("linear", "attentive", "majority")}
    rows = {k: r for k, r in results.items() if k not in own}
    if baselines and cached_baselines:
        rows = {k: ProbeResult(**d) for k, d in cached_baselines.items()}
    everything = {**own, **rows}
    scalars = {f"probe/{name}_top1": r.top1 for name, r in everything.items()}
    scalars["probe/chance"] = results["linear"].chance
    header, shown, raw = probe_table(everything, names)
    linear = results["linear"]
    attentive_hparams = results["attentive"].hparams if "attentive" in results else {}
    settings = probe_settings(linear.num_train, linear.num_test, view.source, attentive_hparams.get("epochs"),
                              attentive_hparams.get("seed"), seed if baselines else None,
                              getattr(view, "sample_order", None))
    details = {"source": view.source, "num_classes": linear.num_classes, "class_names": names,
               "num_images": linear.num_test, "num_train_images": linear.num_train, "settings": settings,
               **{k: r.to_dict() for k, r in everything.items()}, "baselines": {k: r.to_dict() for k, r in rows.items()}}
    text = "\n".join([_markdown(header, shown), "", settings])
    return EvalResult(scalars, texts={"probe/table": text}, tables={"probe/table": (header, raw)}, details=details)


def probe_settings(num_train: int, num_test: int, source: str, attentive_epochs: int | None,
                   attentive_seed: int | None, random_init_seed: int | None, order: str | None = None) -> str:
    """The line under every probe table: what decides its figures. The end-of-fit probe, `genlip eval` and
    `genlip probe` default to different budgets and epochs, so one checkpoint's figures differ between them
    as far as this line does (the same line on the same checkpoint and data: the same figures)."""
    parts = [f"{num_train:,} train / {num_test:,} test images of {source}" + (f" ({order})" if order else "")]
    if attentive_epochs:
        parts.append(f"attentive probe {attentive_epochs} epochs, seed {attentive_seed}")
    if random_init_seed is not None:
        parts.append(f"random init seed {random_init_seed}")
    return "probe settings: " + "; ".join(parts)


def real_image_view(view: EvalView, options: dict[str, Any]) -> EvalView:
    """The transfer probe's data: the real image set `dataset` at the data module's preprocessing."""
    from genlip_lit.eval.real_images import RealImageView

    if isinstance(view, DataModuleView):
        return RealImageView(options["dataset"], _preprocessing(view), view.device)
    return view


def _check_transfer(options: dict[str, Any]) -> None:
    from genlip_lit.eval.real_images import REAL_SETS

    if options["dataset"] not in REAL_SETS:
        raise ValueError(f"TransferProbe: unknown dataset {options['dataset']!r}; known: {sorted(REAL_SETS)}")
    if options["folds"] < 2 or options["attentive_epochs"] < 0:
        raise ValueError("TransferProbe: folds >= 2 and attentive_epochs >= 0 needed")
    from genlip_lit.eval.features import check_layer

    check_layer(options["layer"])  # a ValueError names what is accepted


def _plan_transfer(view: Any, options: dict[str, Any]) -> tuple[str, int, int, str]:
    n, folds = view.num_images, options["folds"]
    return f"{n:,} real images, {folds}-fold", n, 1, f"features read, training the probes on {folds} folds"


@evaluation(
    "transfer", title="transfer probe", prefix="transfer_{dataset}", view=real_image_view, plan=_plan_transfer,
    check=_check_transfer, carries="cached_baselines", key=("dataset", "folds", "layer"),
    metrics=[Metric("linear_top1"), Metric("linear_se", headline=False), Metric("random_init_linear_top1"),
             Metric("pixels_linear_top1", headline=False), Metric("majority_top1", headline=False),
             Metric("chance", headline=False), Metric("margin_in_se")],
)
@torch.no_grad()
def transfer_evaluation(module: Any, view: EvalView, *, dataset: str = "digits", folds: int = 5,
                        attentive_epochs: int = 0, batch_size: int = 64, seed: int = 0, layer: int | str = "final",
                        cached_baselines: dict[str, Any] | None = None) -> EvalResult:
    """Transfer to real images the encoder never saw: k-fold linear and attentive probes on a labelled set that
    an installed package ships (scikit-learn's 1,797 handwritten digits; `pip install 'genlip_lit[transfer]'`),
    every image held out once, each figure with its binomial standard error, beside the same architecture at
    random init, raw pixels, majority class and chance (`eval/transfer.py`). Images are drawn at the data
    module's image size and normalisation; the baselines of a scheduled probe are computed at its first run and
    reused. On 2 busy cores the linear probes of encoder, random init and pixels took about 2 minutes, the
    attentive ones (10 epochs) 3 more.

    Args:
        dataset: the real image set (eval/real_images.py REAL_SETS: digits)
        folds: k of the stratified k-fold: every image held out once
        attentive_epochs: > 0 adds the attentive probe (about 3x the time); 0: linear only
        batch_size: images per forward pass
        seed: the folds and the random-init weights
        layer: the image tower's hidden state the encoder and random-init rows read: final (the final LayerNorm output, what export gives), -2 (the penultimate block), mean (over blocks) or any index
    """
    from genlip_lit.eval import transfer

    view = real_image_view(view, {"dataset": dataset})
    return transfer.transfer_evaluation(module, view, folds=folds, seed=seed, attentive_epochs=attentive_epochs,
                                        batch_size=batch_size, cached_baselines=cached_baselines, layer=layer)


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
    from genlip_lit.console.tables import markdown_table

    return markdown_table(header, rows)


@evaluation("readout", title="patch readout", metrics=[
    Metric("accuracy", "patch readout", curve="patch readout accuracy"),
    Metric("chance_permuted", "readout chance (permuted)", headline=False), Metric("chance_uniform", headline=False)])
@torch.no_grad()
def readout_evaluation(
    module: Any, view: EvalView, *, budget: int = 256, batch_size: int = 64, k: int = 5,
    words: list[str] | None = None, grid_images: int = 8,
) -> EvalResult:
    """Top-k words per patch through the LM head (or text embeddings); accuracy where the view has label maps.

    Args:
        budget: held-out images whose patches are read out
        batch_size: images per forward pass
        k: a patch reads right when its top-k words hold its colour or shape word
        words: the candidate words; null: the data's (the embedded captions' vocabulary, else its class names)
        grid_images: images drawn with their top word per patch
    """
    from genlip_lit.eval.plots import image_grid, label_patches
    from genlip_lit.eval.readout import readout, top_words

    words = words or view.vocabulary.words or view.class_names
    if not words:
        return skipped(f"{view}: no candidate words (set the readout's words)")
    scores, maps, pictures = [], {}, []
    for batch in view.batches("val", budget, batch_size):
        try:
            scores.append(module.patch_word_scores(batch.pixel_values, words).float().cpu())
        except NotImplementedError as err:
            return skipped(f"{type(module).__name__}: {err}")
        for name, lab in batch.patch_labels.items():
            maps.setdefault(name, []).append(lab.cpu())
        if len(pictures) < grid_images:
            pictures.extend(_to_uint8_images(batch)[: grid_images - len(pictures)])
    if not scores:
        return skipped(f"{view}: no held-out images")
    all_scores = torch.cat(scores)
    side = int(np.sqrt(all_scores.shape[1]))
    result = EvalResult()
    label_words = view.vocabulary.patch_label_words
    full = {name: torch.cat(parts) for name, parts in maps.items()
            if name in label_words and sum(len(p) for p in parts) == len(all_scores)}
    grid = next(iter(full.values())).shape[1:] if full else None
    if grid is not None and grid[0] * grid[1] != all_scores.shape[1]:
        return skipped(f"{view}: the data's patch label maps are {grid[0]}x{grid[1]} but the model makes "
                       f"{all_scores.shape[1]} patches per image (label maps made for another patch size)")
    if full:
        r = readout(all_scores, words, full, {n: label_words[n] for n in full}, k=k)
        result.scalars.update({"readout/accuracy": r.accuracy, "readout/chance_uniform": r.chance_uniform,
                               "readout/chance_permuted": r.chance_permuted})
        grid_words = r.top_words
        result.details = {"num_patches": r.num_patches, "k": r.k}
    else:  # no label maps: still show what each patch says; the scores do not apply (NaN: no logger plots them)
        grid_words = top_words(all_scores, words, (side, side))
        result.scalars.update(dict.fromkeys(("readout/accuracy", "readout/chance_uniform", "readout/chance_permuted"),
                                            float("nan")))
        result.details["note"] = ("not scored: these images carry no per-patch labels (the embedded scenes do), so "
                                  "the readout only draws each patch's top word (readout/top_word_per_patch)")
    result.details["num_images"] = int(all_scores.shape[0])
    patch = pictures[0].shape[0] // side if pictures else 1
    tiles = [label_patches(p, grid_words[i], patch) for i, p in enumerate(pictures)]
    result.images["readout/top_word_per_patch"] = image_grid(tiles, columns=4)
    return result


def _to_uint8_images(batch: EvalBatch) -> list[np.ndarray]:
    """Normalized pixels back to displayable HWC uint8 (undoing mean/std 0.5 is close enough for a picture)."""
    x = batch.pixel_values.detach().float().cpu()
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp(min=1e-6)
    return [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in x]


@evaluation("zero_shot", title="zero-shot classification", metrics=[
    Metric("top1", "zero-shot top-1", curve="zero-shot top-1"), Metric("chance", headline=False)])
@torch.no_grad()
def zero_shot_evaluation(
    module: Any, view: EvalView, *, budget: int = 128, batch_size: int = 64,
    class_names: list[str] | None = None, templates: list[str] | None = None,
) -> EvalResult:
    """Image classification from class names: caption likelihood (GenLIP) or text similarity (contrastive).

    Args:
        budget: held-out images classified from class names
        batch_size: images per forward pass
        class_names: null: the data's classes (embedded scenes: the shape of the largest object)
        templates: prompt templates; null: the data's (embedded scenes: "a {size} {colour} {}", else
            "a photo of a {}.")
    """
    from genlip_lit.eval.zero_shot import zero_shot_accuracy

    names = class_names or view.class_names
    if not names:
        return skipped(f"{view}: no class names (set the zero-shot's class_names)")
    templates = templates or view.vocabulary.templates
    pairs = ((p, y) for p, y in view.labelled("val", budget, batch_size))
    try:
        acc, n = zero_shot_accuracy(module, pairs, names, templates)
    except NotImplementedError as err:
        return skipped(f"{type(module).__name__}: {err}")
    result = EvalResult({"zero_shot/top1": acc, "zero_shot/chance": 1.0 / len(names)},
                        details={"num_images": n, "templates": len(templates)})
    note = below_chance_note(acc, n, names, view.vocabulary.words)
    if note:
        result.details["note"] = note
    return result


def below_chance_note(top1: float, n: int, names: list[str], caption_words: list[str] | None) -> str | None:
    """Why a zero-shot figure sits below uniform chance (more than 2 standard errors: not noise), or None: a class
    is scored by a prompt with its name read as a caption (its likelihood, or its text embedding's similarity), so
    class names that the captions never use rank by their spelling, not the image."""
    chance = 1.0 / len(names)
    if n == 0 or top1 >= chance - 2 * math.sqrt(chance * (1 - chance) / n):
        return None
    known = set(caption_words or [])
    unused = [name for name in names if known and not set(name.lower().split()) <= known]
    which = (f"{len(unused)} of the {len(names)} class names are not caption words (e.g. {', '.join(unused[:3])})"
             if unused else "the class names may be words the captions rarely use")
    return (f"below chance ({100 * top1:.1f}% vs {100 * chance:.1f}%): {which}; zero-shot scores each class by a "
            "prompt with its name read as a caption: set class_names (and templates) to the captions' words")


@evaluation("captions", title="captions", metrics=[
    Metric("cider", "caption CIDEr-D", kind="num", curve="caption CIDEr-D"),
    Metric("cider_constant", always=False), Metric("bleu4")])
@torch.no_grad()
def caption_evaluation(
    module: Any, view: EvalView, *, budget: int = 64, batch_size: int = 64,
    max_new_tokens: int | None = None, show: int = 8,
) -> EvalResult:
    """Greedy captions for a fixed held-out set (`budget` val samples in the views' seeded order), scored by CIDEr-D
    and BLEU-4 against their reference captions, beside the constant-caption floor (`captions/cider_constant`: the
    most frequent training caption on every image, where the data has training captions).

    Args:
        budget: held-out images captioned greedily
        batch_size: images per forward pass
        max_new_tokens: caption length cap; null: the module's caption_max_new_tokens
        show: captions written to the loggers and report as text
    """
    from genlip_lit.eval.caption_metrics import caption_scores

    if not module.is_generative:
        return skipped(f"{type(module).__name__} does not generate captions")
    generated, references = [], []
    for batch in view.batches("val", budget, batch_size):
        if not batch.captions:
            return skipped(f"{view}: no reference captions")
        generated += module.generate_captions(batch.pixel_values, max_new_tokens)
        references += [[c] for c in batch.captions]
    if not generated:
        return skipped(f"{view}: no held-out images")
    scores = caption_scores(generated, references)
    scalars = {"captions/cider": scores["cider"], "captions/bleu4": scores["bleu4"]}
    constant, read = most_frequent_train_caption(view)
    if constant is not None:  # the floor a captioner must beat: one caption for every image
        scalars["captions/cider_constant"] = caption_scores([constant] * len(generated), references)["cider"]
    header = ["generated", "reference"]
    rows = [[g, r[0]] for g, r in zip(generated[:show], references[:show])]
    baseline = ("" if constant is None else f"\n\nconstant-caption baseline: CIDEr-D "
                f"{scalars['captions/cider_constant']:.3f} for {constant!r} on every image (the most frequent of "
                f"{read:,} training captions), against the model's {scores['cider']:.3f}")
    return EvalResult(
        scalars,
        texts={"captions/samples": _markdown(header, rows) + baseline},
        tables={"captions/samples": (header, rows)},
        details={"num_images": len(generated), "constant_caption": constant, "constant_caption_from": read,
                 "samples": [{"generated": g, "reference": r[0]} for g, r in zip(generated[:show], references)]},
    )


CONSTANT_CAPTION_READS = 1000  # training captions read for the constant-caption baseline


def most_frequent_train_caption(view: EvalView, limit: int = CONSTANT_CAPTION_READS) -> tuple[str | None, int]:
    """(the most frequent of up to `limit` training captions (the first seen on a tie), how many were read):
    from a local shard directory without decoding images, else from the view's train batches; None without any."""
    import collections
    import os

    source = str(getattr(view, "source", ""))
    captions: list[str] = []
    if source and os.path.isfile(os.path.join(source, "train", "index.json")):
        from genlip_lit.data.caption_coverage import shard_captions

        captions = shard_captions(source, limit)[0]
    elif "train" in getattr(view, "splits", ()):
        for batch in view.batches("train", min(limit, 256), 64):
            captions += list(batch.captions or [])
    captions = [c for c in captions if c]
    if not captions:
        return None, 0
    return collections.Counter(captions).most_common(1)[0][0], len(captions)


@evaluation("sink", title="attention sink", metrics=[
    Metric("vision_to_first_mean", "first-token mass, vision", curve="first-token attention mass (vision)"),
    Metric("text_to_first_mean", "first-token mass, text"), Metric("text_to_vision_mean", headline=False)])
@torch.no_grad()
def sink_evaluation(module: Any, view: EvalView, *, budget: int = 32, batch_size: int = 32) -> EvalResult:
    """Per-layer attention mass on the first token (from image and from text queries) and from text to image
    (NaN for the text rows where the maps hold no text: contrastive towers, separate decoders).

    Args:
        budget: held-out image+caption sequences whose attention maps are read
        batch_size: sequences per forward pass
    """
    from genlip_lit.eval.sink import SinkMasses, sink_masses, sink_plot

    per_batch: list[tuple[int, SinkMasses]] = []
    for batch in view.batches("val", budget, batch_size):
        ids = batch.input_ids if module.is_generative else None
        try:
            maps, num_prefix = module.attention_maps(batch.pixel_values, ids)
        except NotImplementedError as err:
            return skipped(f"{type(module).__name__}: {err}")
        # text rows only where the maps include the text (a separate decoder's do not)
        mask = batch.text_mask if ids is not None and maps and maps[0].shape[-1] > num_prefix else None
        per_batch.append((len(batch), sink_masses(maps, num_prefix, mask)))
    if not per_batch:
        return skipped(f"{view}: no held-out images")
    total = sum(n for n, _ in per_batch)
    keys = ("vision_to_first", "text_to_first", "text_to_vision", "text_to_text")
    merged = {k: [sum(n * getattr(m, k)[i] for n, m in per_batch) / total
                  for i in range(len(getattr(per_batch[0][1], k)))] for k in keys}
    masses = SinkMasses(**merged)
    scalars: dict[str, float] = {}
    for k, values in masses.as_dict().items():
        finite = [v for v in values if v == v]  # NaN: no text rows (contrastive towers, separate decoders)
        scalars[f"sink/{k}_mean"] = float(np.mean(finite)) if finite else float("nan")
        for i, v in enumerate(values):
            scalars[f"sink/{k}/layer{i:02d}"] = v
    return EvalResult(scalars, {"sink/per_layer": sink_plot(masses)},
                      details={"masses": masses.as_dict(), "num_images": total})
