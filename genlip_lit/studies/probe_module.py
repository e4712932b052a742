"""The streamed full-dataset probe as a Lightning run (`genlip probe-full`): frozen encoder + probe heads.

    genlip probe-full --config experiments/probe_imagenet.yaml --model.encoder runs/so16 --data.data data/in1k

The encoder comes from a checkpoint through `checkpoints/loading.load_checkpoint` (weights-only, registered classes,
sizes checked on the meta device, digests and finiteness verified), is frozen and stays in eval mode; it runs on
every mini-batch (no features are stored: ImageNet's patch features of So/16 would be ~1.2 TB in fp32, and
augmentation changes them every epoch). Heads, trained together on the same forward pass (each only reads the
features, so training them together is training them apart, at the cost of one encoder pass):

* `attentive`: `eval/probes.AttentivePoolingClassifier` (a learned query attends to the LayerNorm'ed patch
  features, then LayerNorm + linear), the paper's probe for an encoder without [CLS];
* `linear`: a linear classifier on the pooled vector (patch mean, or the encoder's own `encode_pooled`) after a
  parameter-free batch norm whose statistics are reduced over all ranks (the MAE linear-probe recipe; SyncBatchNorm
  needs CUDA, this works on gloo too).

AdamW (its own lr and weight decay per head), linear warmup then cosine (`schedule.warmup_cosine`), per step. The
checkpoint holds the heads, optimizer and data position, not the encoder (named by path and size, re-read and
checked on resume). Validation reports top-1 per head (`probe/<head>_top1`, reduced over ranks, each image once) and
writes `val_predictions.csv` (key, label, each head's prediction) so a figure leads back to its files.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genlip_lit.errors import GenLIPUserError
from genlip_lit.eval.features import _mean_pools
from genlip_lit.eval.probes import AttentivePoolingClassifier, _default_heads
from genlip_lit.models.schedule import warmup_cosine

log = logging.getLogger(__name__)

HEADS = ("attentive", "linear")


class _SumOverRanks(torch.autograd.Function):
    """all_reduce(SUM) with its gradient (the sum of the ranks' gradients), for statistics shared by all ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        out = x.clone()
        torch.distributed.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        out = grad.clone()
        torch.distributed.all_reduce(out)
        return out


class GlobalBatchNorm(nn.Module):
    """BatchNorm1d without affine parameters whose batch statistics are those of the global batch (all ranks):
    the same features standardised the same way on 1 process or many."""

    def __init__(self, dim: int, momentum: float = 0.1, eps: float = 1e-6) -> None:
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return (x - self.running_mean) / torch.sqrt(self.running_var + self.eps)
        x = x.float()
        stats = torch.cat([x.sum(0), (x * x).sum(0), x.new_tensor([x.shape[0]])])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            stats = _SumOverRanks.apply(stats)
        dim = x.shape[1]
        count = stats[-1].clamp_min(1)
        mean = stats[:dim] / count
        var = (stats[dim : 2 * dim] / count - mean * mean).clamp_min(0)
        with torch.no_grad():
            unbiased = var * count / (count - 1).clamp_min(1)
            self.running_mean.lerp_(mean.detach(), self.momentum)
            self.running_var.lerp_(unbiased.detach(), self.momentum)
        return (x - mean) / torch.sqrt(var + self.eps)


class LinearHead(nn.Module):
    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = GlobalBatchNorm(dim)
        self.fc = nn.Linear(dim, num_classes)
        nn.init.zeros_(self.fc.weight)  # a convex problem: zeros make the run independent of any RNG
        nn.init.zeros_(self.fc.bias)

    def forward(self, pooled: Tensor) -> Tensor:
        return self.fc(self.norm(pooled))


class StreamedProbe(L.LightningModule):
    """Frozen encoder + probe heads; `connect()` (from the data: class count and names) builds the heads.

    Args:
        encoder: a genlip checkpoint or run dir (its newest last.ckpt), e.g. from `genlip import`.
        heads: the heads trained together on one encoder pass: attentive (patches) and/or linear (pooled).
        attentive_lr: peak AdamW lr of the attentive head.
        attentive_weight_decay: AdamW weight decay of the attentive head.
        linear_lr: peak AdamW lr of the linear head (after a parameter-free batch norm).
        linear_weight_decay: the linear head's weight decay.
        betas: AdamW betas (both heads).
        warmup_epochs: linear warmup epochs, then cosine decay to min_lr_ratio x lr at the last step.
        min_lr_ratio: the cosine's floor as a fraction of the peak lr.
        num_heads: attention heads of the attentive probe (null: the largest of <= 8 dividing the width).
        num_classes: null: from the data (class_names in genlip_meta.json, or the folders).
        seed: the heads' initialisation (the in-memory probe's with the same seed).
        write_predictions: write val_predictions.csv in the run dir (key, label, each head's class).
    """

    def __init__(
        self,
        encoder: str,
        heads: Sequence[str] = HEADS,
        attentive_lr: float = 1e-3,
        attentive_weight_decay: float = 0.05,
        linear_lr: float = 1e-3,
        linear_weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 1.0,
        min_lr_ratio: float = 0.0,
        num_heads: int | None = None,
        num_classes: int | None = None,
        seed: int = 0,
        write_predictions: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        unknown = sorted(set(heads) - set(HEADS))
        if unknown or not heads:
            raise GenLIPUserError(f"model.heads {list(heads)}: choose one or more of {list(HEADS)}")
        from genlip_lit.checkpoints.loading import load_checkpoint, resolve_checkpoint
        from genlip_lit.data.transforms import Preprocessing

        self.encoder_file = os.path.abspath(resolve_checkpoint(encoder))
        module, data_hparams = load_checkpoint(self.encoder_file, "cpu")  # every safety check of the loader
        self.encoder = module.requires_grad_(False).eval()
        self.preprocessing = Preprocessing.from_hparams(data_hparams)
        self.probe_heads = nn.ModuleDict()
        self.class_names: list[str] = []
        self._val: dict[str, Tensor] = {}
        self._rows: list[tuple[str, int, list[int]]] = []
        self.skipped_train = 0

    # ------------------------------------------------------------------------------------ set-up
    def connect(self, class_names: Sequence[str], image_size: int | None = None) -> None:
        """Build the heads for the data's classes (seeded: the in-memory probe's initialisation); `image_size`:
        the side the data feeds (the feature width is read from one forward pass at it)."""
        count = len(class_names)
        if self.hparams.num_classes is not None and self.hparams.num_classes != count:
            raise GenLIPUserError(f"model.num_classes is {self.hparams.num_classes} but the data has {count} classes")
        self.class_names = list(class_names)
        size = image_size or self.preprocessing.image_size
        with torch.no_grad():
            dim = int(self.encoder.encode_patches(torch.zeros(1, 3, size, size)).shape[-1])
        heads = self.hparams.num_heads or _default_heads(dim)
        with torch.random.fork_rng(devices=[]):  # the same init as eval/probes.attentive_probe with this seed
            torch.manual_seed(self.hparams.seed)
            built = {"attentive": AttentivePoolingClassifier(dim, count, heads)} \
                if "attentive" in self.hparams.heads else {}
        if "linear" in self.hparams.heads:
            built["linear"] = LinearHead(dim, count)
        self.probe_heads = nn.ModuleDict(built)

    def train(self, mode: bool = True) -> StreamedProbe:
        super().train(mode)
        self.encoder.eval()  # frozen means eval mode too: no dropout or drop path in the features
        return self

    def configure_optimizers(self) -> Any:
        if not len(self.probe_heads):
            raise GenLIPUserError("the probe heads were not built: StreamedProbe.connect(class_names) runs first")
        h = self.hparams
        groups = [{"params": list(head.parameters()), "lr": h[f"{name}_lr"], "weight_decay": h[f"{name}_weight_decay"]}
                  for name, head in self.probe_heads.items()]
        optimizer = torch.optim.AdamW(groups, betas=tuple(h.betas))
        # counted from the data, not `trainer.estimated_stepping_batches`: that builds the train loader before a
        # resume has restored the loop state, and the loader's position would then never be restored
        per_epoch = self.trainer.datamodule.steps_per_epoch()
        total = per_epoch * max(1, self.trainer.max_epochs or 1)
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            total = min(total, self.trainer.max_steps)
        warmup = min(round(h.warmup_epochs * per_epoch), max(total - 1, 0))
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, total, warmup, h.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ------------------------------------------------------------------------------------ steps
    def _features(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        with torch.no_grad():
            patches = self.encoder.encode_patches(pixels)
            pooled = None
            if "linear" in self.probe_heads:
                pooled = patches.mean(dim=1) if _mean_pools(self.encoder) else self.encoder.encode_pooled(pixels)
        return patches, pooled

    def _logits(self, patches: Tensor, pooled: Tensor | None) -> dict[str, Tensor]:
        return {name: head(patches if name == "attentive" else pooled) for name, head in self.probe_heads.items()}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        labels = batch["label"]
        keep = labels >= 0
        self.skipped_train += int((~keep).sum())
        patches, pooled = self._features(batch["pixels"])
        if not bool(keep.all()):
            patches, pooled, labels = patches[keep], None if pooled is None else pooled[keep], labels[keep]
        if labels.numel() == 0:  # nothing to learn from in this batch: a zero loss that still touches every head
            return sum(p.sum() * 0.0 for p in self.probe_heads.parameters())
        losses = {name: F.cross_entropy(logits.float(), labels) for name, logits in self._logits(patches, pooled).items()}
        for name, loss in losses.items():
            self.log(f"probe/{name}_train_loss", loss, prog_bar=name == "attentive")
        return sum(losses.values())

    def on_validation_epoch_start(self) -> None:
        self._val = {"count": torch.zeros((), device=self.device, dtype=torch.long)}
        self._val.update({name: torch.zeros((), device=self.device, dtype=torch.long) for name in self.probe_heads})
        self._rows = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        labels = batch["label"]
        keep = labels >= 0
        patches, pooled = self._features(batch["pixels"])
        predictions = {name: logits.argmax(dim=1) for name, logits in self._logits(patches, pooled).items()}
        self._val["count"] += keep.sum()
        for name, predicted in predictions.items():
            self._val[name] += ((predicted == labels) & keep).sum()
        if self.hparams.write_predictions:
            columns = [predictions[name].tolist() for name in self.probe_heads]
            for i, (key, label) in enumerate(zip(batch["key"], labels.tolist(), strict=True)):
                self._rows.append((str(key), int(label), [c[i] for c in columns]))

    def on_validation_epoch_end(self) -> None:
        totals = {name: self.trainer.strategy.reduce(value, reduce_op="sum") for name, value in self._val.items()}
        count = max(int(totals["count"]), 1)
        for name in self.probe_heads:
            self.log(f"probe/{name}_top1", int(totals[name]) / count, sync_dist=True)  # equal on every rank
        self.log("probe/val_images", float(totals["count"]), sync_dist=True)
        self.last_top1 = {name: int(totals[name]) / count for name in self.probe_heads}
        self.last_val_images = int(totals["count"])
        if self.hparams.write_predictions and not self.trainer.sanity_checking:
            self._write_predictions()

    def _write_predictions(self) -> None:
        rows = self._rows
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        folder = self.trainer.log_dir or self.trainer.default_root_dir
        if not self.trainer.is_global_zero or not folder:
            return
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "val_predictions.csv")
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["key", "label", *(f"{name}_prediction" for name in self.probe_heads)])
            for key, label, predicted in sorted(rows):
                name = self.class_names
                writer.writerow([key, name[label] if 0 <= label < len(name) else label,
                                 *(name[p] if p < len(name) else p for p in predicted)])

    # ------------------------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """The heads only: the encoder is named (path, size) and re-read from its own file on resume."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("encoder.")}
        checkpoint["probe_encoder"] = {"path": self.encoder_file, "bytes": os.path.getsize(self.encoder_file)}
        checkpoint["probe_class_names"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored = checkpoint.get("probe_encoder") or {}
        size = os.path.getsize(self.encoder_file)
        if stored.get("bytes") not in (None, size):
            raise GenLIPUserError(f"this probe checkpoint was trained on the features of {stored.get('path')} "
                                  f"({stored.get('bytes')} bytes); model.encoder is {self.encoder_file} ({size} bytes)")
        if checkpoint.get("probe_class_names", self.class_names) != self.class_names:
            raise GenLIPUserError("this probe checkpoint was trained on other classes than data.data holds")
        checkpoint["state_dict"].update({f"encoder.{k}": v for k, v in self.encoder.state_dict().items()})


__all__ = ["GlobalBatchNorm", "StreamedProbe"]
