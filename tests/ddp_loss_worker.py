"""One DDP rank for test_contrastive's loss test (run under `python -m torch.distributed.run`, gloo on CPU).

Every rank holds its slice of one fixed global batch of embeddings, computes the contrastive loss with
features exchanged across ranks, and rank 0 writes the mean over ranks (what DDP's gradient averaging optimizes).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
import torch.nn.functional as F

from genlip_lit.modules.contrastive import contrastive_loss


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    texts = F.normalize(torch.randn(8, 16, generator=g), dim=-1)
    part = slice(rank * 8 // world, (rank + 1) * 8 // world)
    result = {}
    for kind in ("clip", "siglip"):
        loss_fn = contrastive_loss(kind, rank, world)
        scale, bias = torch.tensor(10.0), torch.tensor(-5.0)
        loss = loss_fn(images[part], texts[part], scale) if kind == "clip" else loss_fn(
            images[part], texts[part], scale, bias)
        total = loss.detach().clone()
        dist.all_reduce(total)
        result[kind] = float(total) / world
    if rank == 0:
        with open(args.out, "w") as fh:
            json.dump(result, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
