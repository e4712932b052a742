"""One training step of a tiny GenLIPModule, as one process or as one of 2 DDP ranks (gloo on CPU), for
test_safety's "DDP = one process" test:

    python tests/ddp_global_loss_worker.py single OUT
    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_global_loss_worker.py ddp OUT

The global batch is fixed: 6 captions of very different lengths. Under DDP rank 0 gets the 2 shortest and rank 1
the 4 longest, so the ranks' target token counts differ several-fold. Rank 0 (or the single process) writes the
gradients after DDP's all-reduce, the logged train metrics and the data counters to OUT/<mode>.pt.
"""

from __future__ import annotations

import os
import sys

import lightning as L
import torch

from genlip_lit.data.datamodule import BatchCollator
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer
from genlip_lit.modules import GenLIPModule

CAPTIONS = [
    "a red circle",
    "a blue square",
    "a large green triangle and a small red square and a blue circle",
    "two small blue circles",
    "a red square and a green circle and a small blue triangle",
    "a big green square",
]
RANK_SLICES = {0: slice(0, 2), 1: slice(2, 6)}


class GradRecorder(L.Callback):
    """Keeps the gradients the optimizer is about to use (after DDP's averaging)."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.detach().clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def batch_of(indices: range | list[int], encoder: CaptionEncoder, skipped: int, truncated: int, unknown: int = 0):
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (len(CAPTIONS), 3, 16, 16), dtype=torch.uint8, generator=g)
    items = []
    for i in indices:
        ids, mask = encoder.encode(CAPTIONS[i])
        items.append({"pixel_values": pixels[i], "input_ids": ids, "loss_mask": mask, "truncated": False,
                      "key": f"s{i}", "caption": CAPTIONS[i], "label": -1, "patch_shape": None, "patch_color": None})
    batch = BatchCollator(encoder, 16)(items)
    batch.num_skipped, batch.num_truncated, batch.num_unknown = skipped, truncated, unknown
    return batch


def main(mode: str, out: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    L.seed_everything(0, verbose=False)
    tokenizer = OpenCLIPTokenizer(compact_corpus="synthetic")
    module = GenLIPModule(arch_overrides={"depth": 2, "width": 32, "ffn_hidden": 64}, tokenizer=tokenizer,
                          max_text_len=24, lr=1e-3, warmup_steps=0)
    encoder = module.caption_encoder
    if mode == "single":
        batch = batch_of(range(len(CAPTIONS)), encoder, skipped=3, truncated=5, unknown=9)
    else:  # rank 0: 2 short captions, 1 skipped sample; rank 1: 4 long ones, 2 skipped; 5 truncated, 9 unknown in all
        batch = batch_of(list(range(6))[RANK_SLICES[rank]], encoder, skipped=1 + rank, truncated=2 + rank,
                         unknown=4 + rank)
    recorder = GradRecorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=2 if mode == "ddp" else 1, strategy="ddp" if mode == "ddp" else "auto",
        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, callbacks=[recorder], num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    loader = torch.utils.data.DataLoader([batch], batch_size=None, collate_fn=lambda b: b)
    trainer.fit(module, train_dataloaders=loader)
    if rank == 0:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        torch.save({"grads": recorder.grads, "metrics": metrics, "skipped": module.skipped_samples,
                    "truncated": module.truncated_captions, "unknown": module.unknown_tokens}, os.path.join(out, f"{mode}.pt"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
