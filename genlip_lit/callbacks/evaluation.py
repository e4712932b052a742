"""Evaluation callbacks: probes, patch readout, caption samples, zero-shot and the attention-sink monitor.

Each one runs every `every_n_steps` optimizer steps (0: never during training) and at the end of fit, on a
bounded sample budget, in eval mode under `torch.no_grad()`, on global rank 0 only; it logs scalars (and images
or text on TensorBoard) at the trainer's global step and keeps its history in checkpoints. The same
`evaluate(module, data)` serves `genlip eval` after training. They reach the model only through the encoder
contract (`modules/base.py`), so they work for GenLIP and the contrastive baselines alike.

    trainer:
      callbacks:
        - class_path: genlip_lit.callbacks.PatchReadout
          init_args: {every_n_steps: 1350, budget: 256}
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

import lightning as L
import numpy as np
import torch

from genlip_lit.data.batch import Batch

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    """What one evaluation produced: scalars for every logger, images and text for TensorBoard and reports."""

    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # HWC uint8
    texts: dict[str, str] = field(default_factory=dict)  # markdown
    details: dict[str, Any] = field(default_factory=dict)  # JSON-able extras for report.json


class EvalData:
    """Held-out batches for evaluations, from a `GenLIPDataModule` (deterministic order: no shuffling)."""

    def __init__(self, datamodule: Any, device: torch.device | str, batch_size: int = 64) -> None:
        self.datamodule = datamodule
        self.device = torch.device(device)
        self.batch_size = batch_size

    def batches(self, split: str, budget: int) -> Iterator[Batch]:
        """Up to `budget` samples of `split` ("val" or "train", at the data's image_size, in stored order), normalized."""
        from genlip_lit.data.datamodule import shutdown_workers

        dm = self.datamodule
        base = dm.data_dirs[0]
        if split == "val" and dm.val_dataset is None:
            dm.setup("validate")
        dataset = dm.eval_dataset(split, base)  # fixed size, unpacked, even for stage-2 (native) data
        loader = dm._loader(dataset, self.batch_size)
        seen = 0
        try:
            for batch in loader:
                if seen >= budget:
                    break
                batch = batch.to(self.device).normalized()
                take = min(len(batch), budget - seen)
                if take < len(batch):
                    batch = _head(batch, take)
                seen += take
                if len(batch):
                    yield batch
        finally:
            shutdown_workers(loader)


def _head(batch: Batch, n: int) -> Batch:
    """The first n samples of a batch."""
    cut: dict[str, Any] = {}
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor) and value.dim() >= 1 and value.shape[0] == len(batch):
            cut[f.name] = value[:n]
        elif isinstance(value, list) and len(value) == len(batch):
            cut[f.name] = value[:n]
    return replace(batch, **cut)


def _shards_parameters(trainer: L.Trainer) -> bool:
    """True under strategies whose forward pass is collective (FSDP1, FSDP2 via ModelParallelStrategy)."""
    from lightning.pytorch.strategies import FSDPStrategy, ModelParallelStrategy

    return isinstance(trainer.strategy, (FSDPStrategy, ModelParallelStrategy))


class EvalCallback(L.Callback):
    """Scheduling, eval-mode bookkeeping, logging and checkpointed history shared by the evaluations."""

    name = "eval"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 256, batch_size: int = 64):
        if every_n_steps < 0 or budget < 1 or batch_size < 1:
            raise ValueError(f"{type(self).__name__}: every_n_steps >= 0, budget >= 1 and batch_size >= 1 needed")
        self.every_n_steps = every_n_steps
        self.at_fit_end = at_fit_end
        self.budget = budget
        self.batch_size = batch_size
        self.history: list[dict[str, Any]] = []  # {"step", "seconds", **scalars}, kept in checkpoints
        self._last_step = -1
        self._warned_sharded = False

    # -- to implement ---------------------------------------------------------------------------------
    def evaluate(self, module: Any, data: EvalData) -> EvalResult:
        raise NotImplementedError

    # -- scheduling -----------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module)

    def on_fit_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.at_fit_end and trainer.global_step != self._last_step and not trainer.sanity_checking:
            self.run(trainer, pl_module)

    def run(self, trainer: L.Trainer, pl_module: Any) -> EvalResult | None:
        self._last_step = trainer.global_step
        if _shards_parameters(trainer):
            # Under FSDP every forward is collective, but rank 0 evaluates alone (and generation stops at data-
            # dependent steps): skipping is the safe choice. The checkpoint is one file: `genlip eval` reads it.
            if not self._warned_sharded and trainer.is_global_zero:
                log.warning("%s skipped: evaluation callbacks need an unsharded model; run `genlip eval --ckpt` "
                            "on the checkpoint instead", type(self).__name__)
            self._warned_sharded = True
            return None
        if not trainer.is_global_zero or trainer.datamodule is None:
            return None
        data = EvalData(trainer.datamodule, pl_module.device, self.batch_size)
        was_training = pl_module.training
        pl_module.eval()
        start = time.perf_counter()
        try:
            with torch.no_grad():
                result = self.evaluate(pl_module, data)
        finally:
            pl_module.train(was_training)
        seconds = time.perf_counter() - start
        result.scalars[f"{self.name}/seconds"] = seconds
        self.history.append({"step": trainer.global_step, **result.scalars})
        self._log(trainer, result)
        return result

    def _log(self, trainer: L.Trainer, result: EvalResult) -> None:
        step = trainer.global_step
        finite = {k: float(v) for k, v in result.scalars.items() if v == v}
        for logger in trainer.loggers:
            logger.log_metrics(finite, step=step)
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                for tag, image in result.images.items():
                    experiment.add_image(tag, image, step, dataformats="HWC")
            if hasattr(experiment, "add_text"):
                for tag, text in result.texts.items():
                    experiment.add_text(tag, text, step)

    # -- checkpoints ----------------------------------------------------------------------------------
    def _key_fields(self) -> dict[str, Any]:
        """What tells two instances of one evaluation apart (e.g. probes on different image folders)."""
        return {"every_n_steps": self.every_n_steps, "budget": self.budget}

    @property
    def state_key(self) -> str:
        return self._generate_state_key(**self._key_fields())

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "last_step": self._last_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self._last_step = int(state_dict.get("last_step", -1))


class AttentionSink(EvalCallback):
    """Per-layer attention mass on the first token (from image and from text queries) and from text to image."""

    name = "sink"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 32, batch_size: int = 32):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)

    def evaluate(self, module: Any, data: EvalData) -> EvalResult:
        from genlip_lit.eval.sink import SinkMasses, sink_masses, sink_plot

        per_batch: list[tuple[int, SinkMasses]] = []
        for batch in data.batches("val", self.budget):
            ids = batch.input_ids if module.is_generative else None
            try:
                maps, num_prefix = module.attention_maps(batch.pixel_values, ids)
            except NotImplementedError as err:
                return EvalResult(details={"skipped": f"{type(module).__name__}: {err}"})
            # text rows only where the maps include the text (a separate decoder's do not)
            mask = batch.text_mask if ids is not None and maps and maps[0].shape[-1] > num_prefix else None
            per_batch.append((len(batch), sink_masses(maps, num_prefix, mask)))
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
        return EvalResult(scalars, {"sink/per_layer": sink_plot(masses)}, details={"masses": masses.as_dict()})


class PatchReadout(EvalCallback):
    """Top-k words per patch through the LM head (or text embeddings); accuracy on the embedded label maps."""

    name = "readout"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 256, batch_size: int = 64,
                 k: int = 5, words: list[str] | None = None, grid_images: int = 8):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.k = k
        self.words = words  # None: the embedded captions' vocabulary
        self.grid_images = grid_images

    def evaluate(self, module: Any, data: EvalData) -> EvalResult:
        from genlip_lit.data.synthetic import caption_vocabulary
        from genlip_lit.eval.plots import image_grid, label_patches
        from genlip_lit.eval.readout import readout

        words = self.words or caption_vocabulary()
        scores, shapes, colors, pictures = [], [], [], []
        for batch in data.batches("val", self.budget):
            scores.append(module.patch_word_scores(batch.pixel_values, words).float().cpu())
            if batch.patch_shape is not None:
                shapes.append(batch.patch_shape.cpu())
                colors.append(batch.patch_color.cpu())
            if len(pictures) < self.grid_images:
                pictures.extend(_to_uint8_images(batch)[: self.grid_images - len(pictures)])
        all_scores = torch.cat(scores)
        result = EvalResult()
        patch = data.datamodule.image_size // int(np.sqrt(all_scores.shape[1]))
        if shapes:
            r = readout(all_scores, words, torch.cat(shapes), torch.cat(colors), k=self.k)
            result.scalars.update({"readout/accuracy": r.accuracy, "readout/chance_uniform": r.chance_uniform,
                                   "readout/chance_permuted": r.chance_permuted})
            top_words = r.top_words
            result.details = {"num_patches": r.num_patches, "k": r.k}
        else:  # no label maps: still show what each patch says
            g = int(np.sqrt(all_scores.shape[1]))
            top = all_scores.argmax(-1).reshape(-1, g, g)
            top_words = [[[words[int(i)] for i in row] for row in img] for img in top]
        tiles = [label_patches(p, top_words[i], patch) for i, p in enumerate(pictures)]
        result.images["readout/top_word_per_patch"] = image_grid(tiles, columns=4)
        return result


def _to_uint8_images(batch: Batch) -> list[np.ndarray]:
    """Normalized pixels back to displayable HWC uint8 (undoing mean/std 0.5 is close enough for a picture)."""
    x = batch.pixel_values.detach().float().cpu()
    lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
    x = (x - lo) / (hi - lo).clamp(min=1e-6)
    return [(img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for img in x]


class ZeroShot(EvalCallback):
    """Image classification from class names: caption likelihood (GenLIP) or text similarity (contrastive)."""

    name = "zero_shot"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 128, batch_size: int = 64,
                 class_names: list[str] | None = None, templates: list[str] | None = None):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.class_names = class_names  # None: the embedded data's classes
        self.templates = templates  # None: the embedded captions' "a {size} {colour} {}" prefixes

    def evaluate(self, module: Any, data: EvalData) -> EvalResult:
        from genlip_lit.data.synthetic import class_names
        from genlip_lit.eval.zero_shot import embedded_templates, zero_shot_accuracy

        names = self.class_names or class_names()
        templates = self.templates or embedded_templates()
        pairs = ((b.pixel_values, b.labels.cpu()) for b in data.batches("val", self.budget))
        acc, n = zero_shot_accuracy(module, pairs, names, templates)
        return EvalResult({"zero_shot/top1": acc, "zero_shot/chance": 1.0 / len(names)},
                          details={"num_images": n, "templates": len(templates)})


class CaptionSamples(EvalCallback):
    """Greedy captions for a fixed held-out set (the first `budget` val samples), with CIDEr-D and BLEU-4."""

    name = "captions"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 64, batch_size: int = 64,
                 max_new_tokens: int | None = None, show: int = 8):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.max_new_tokens = max_new_tokens  # None: the module's caption_max_new_tokens
        self.show = show  # captions written to the log as text

    def evaluate(self, module: Any, data: EvalData) -> EvalResult:
        from genlip_lit.eval.caption_metrics import caption_scores

        if not module.is_generative:
            return EvalResult(details={"skipped": f"{type(module).__name__} does not generate captions"})
        generated, references = [], []
        for batch in data.batches("val", self.budget):
            generated += module.generate_captions(batch.pixel_values, self.max_new_tokens)
            references += [[c] for c in batch.captions]
        scores = caption_scores(generated, references)
        rows = ["| generated | reference |", "|---|---|"]
        rows += [f"| {g} | {r[0]} |" for g, r in zip(generated[: self.show], references[: self.show])]
        return EvalResult(
            {"captions/cider": scores["cider"], "captions/bleu4": scores["bleu4"]},
            texts={"captions/samples": "\n".join(rows)},
            details={"num_images": len(generated), "samples": [
                {"generated": g, "reference": r[0]} for g, r in zip(generated[: self.show], references)]},
        )


class LinearProbe(EvalCallback):
    """Frozen features -> a linear classifier on mean-pooled features and an attentive-pooling probe; top-1.

    Labelled data: an ImageFolder tree (`image_folder: path/to/imagenet`, `CLASS/*.jpg`; its own train/val
    folders or a seeded split) or, by default, the datamodule's shards (train split to fit, val split to test;
    the embedded data's class is the shape of the largest object). `budget` caps each split.
    """

    name = "probe"

    def __init__(self, every_n_steps: int = 0, at_fit_end: bool = True, budget: int = 2000, batch_size: int = 64,
                 image_folder: str | None = None, test_budget: int | None = 500, attentive_epochs: int | None = None):
        super().__init__(every_n_steps, at_fit_end, budget, batch_size)
        self.image_folder = image_folder
        self.test_budget = test_budget  # None: same as budget
        self.attentive_epochs = attentive_epochs  # None: the probe's default

    def _key_fields(self) -> dict[str, Any]:
        return {**super()._key_fields(), "image_folder": self.image_folder}

    def evaluate(self, module: Any, data: EvalData) -> EvalResult:
        from genlip_lit.eval.probes import run_probes

        test_budget = self.test_budget or self.budget
        dm = data.datamodule
        if self.image_folder:
            from genlip_lit.data.transforms import FixedResTransform
            from genlip_lit.eval.labelled import ImageFolderSet

            folder = ImageFolderSet(self.image_folder)
            transform = FixedResTransform(dm.image_size, dm.mean, dm.std, train=False)
            train = _capped(folder.batches(transform, self.batch_size, "train"), self.budget)
            test = _capped(folder.batches(transform, self.batch_size, "val"), test_budget)
            num_classes, source = folder.num_classes, folder.root
        else:
            from genlip_lit.data.synthetic import class_names

            train = ((b.pixel_values, b.labels) for b in data.batches("train", self.budget))
            test = ((b.pixel_values, b.labels) for b in data.batches("val", test_budget))
            num_classes, source = len(class_names()), dm.data_dirs[0]
        attentive = {"epochs": self.attentive_epochs} if self.attentive_epochs else None
        results = run_probes(module, train, test, num_classes, device=data.device, attentive_kwargs=attentive)
        scalars = {f"probe/{name}_top1": r.top1 for name, r in results.items()}
        scalars["probe/chance"] = results["linear"].chance
        return EvalResult(scalars, details={"source": source, **{k: r.to_dict() for k, r in results.items()}})


def _capped(batches: Iterator[tuple[torch.Tensor, torch.Tensor]], budget: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    seen = 0
    for pixels, labels in batches:
        if seen >= budget:
            return
        take = min(len(labels), budget - seen)
        seen += take
        yield pixels[:take], labels[:take]
