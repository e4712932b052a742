"""One DDP rank for test_datamodule's sharding test (run under `python -m torch.distributed.run`, gloo on CPU).

Iterates GenLIPDataModule's train loader for some epochs and writes the sample keys it saw, per epoch, to
`<out>/rank<r>.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os

import torch.distributed as dist

from genlip_lit.data.datamodule import GenLIPDataModule, shutdown_workers
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--drop-last", choices=["default", "true", "false"], default="default")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    encoder = CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), max_len=64)
    drop_last = {"default": None, "true": True, "false": False}[args.drop_last]
    dm = GenLIPDataModule(
        data_dir=args.data_dir, image_size=32, batch_size=8, num_workers=args.num_workers, seed=3,
        drop_last=drop_last, caption_encoder=encoder,
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    epochs = [[key for batch in loader for key in batch.keys] for _ in range(args.epochs)]
    shutdown_workers(loader)
    with open(os.path.join(args.out, f"rank{rank}.json"), "w") as fh:
        json.dump({"epochs": epochs}, fh)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
