"""The streaming pieces under `GenLIPDataModule`: the litdata dataset that decodes, augments and tokenizes one sample
(`GenLIPStreamingDataset`, with a per-sample augmentation generator so crops follow the sample, not the worker),
the collator that turns samples into a `Batch` (counting skipped samples, truncated captions and unknown tokens),
and the resumable loader Lightning stores in checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import litdata  # LITDATA_DISABLE_VERSION_CHECK is set in genlip_lit/__init__.py
import numpy as np
import torch
from torch.utils.data import default_collate

from genlip_lit.data.batch import Batch
from genlip_lit.data.shard_check import FIX, READ_ERRORS, check_split, damaged_read
from genlip_lit.data.tokenizer import CaptionEncoder
from genlip_lit.data.transforms import (
    DEFAULT_MEAN,
    DEFAULT_STD,
    FixedResTransform,
    NativeResTransform,
    SquashTransform,
    decode_image,
)
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import allow_http_endpoint, is_remote, storage_errors

log = logging.getLogger(__name__)
allow_http_endpoint()  # also in spawned loader workers, which rebuild litdata's obstore store from this import


def shutdown_workers(loader: torch.utils.data.DataLoader) -> None:
    """Stop a loader's (persistent) worker processes now; use it when iterating loaders outside a Trainer.

    litdata's iterator holds its loader, so a dropped loader is freed by the cyclic garbage collector, which runs
    the worker queues' finalizers before the iterator's own shutdown: the goodbye message never reaches the
    workers and each one is killed only after torch's 5 s join timeout. (Lightning shuts loaders down itself.)
    """
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    if hasattr(loader, "_iterator"):
        loader._iterator = None


def is_split_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "index.json"))


@contextlib.contextmanager
def without_drop_last_warning() -> Iterator[None]:
    """Mute litdata's DDP warning about `drop_last=False` (right for training, noise for evaluation sets)."""

    class _Filter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "drop_last" not in record.getMessage()

    target = logging.getLogger("litdata.streaming.dataset")
    mute = _Filter()
    target.addFilter(mute)
    try:
        yield
    finally:
        target.removeFilter(mute)


def index_count(split_dir: str | None) -> int | None:
    """Samples listed in a local litdata index, or None when there is no readable index."""
    if not split_dir or not os.path.isfile(os.path.join(split_dir, "index.json")):
        return None
    with open(os.path.join(split_dir, "index.json"), encoding="utf-8") as fh:
        return sum(int(c["chunk_size"]) for c in json.load(fh)["chunks"])


def join_split(base: str, split: str) -> str:
    return f"{base.rstrip('/')}/{split}" if is_remote(base) else os.path.join(base, split)


class GenLIPStreamingDataset(litdata.StreamingDataset):
    """A litdata shard dir whose samples come out decoded, resized, normalized and tokenized.

    Each item is a dict for `BatchCollator`, or None when its image bytes do not decode (a warning is logged
    once per worker, naming the sample index).
    """

    def __init__(
        self,
        input_dir: str,
        transform: FixedResTransform | NativeResTransform | SquashTransform,
        caption_encoder: CaptionEncoder,
        **kwargs: Any,
    ) -> None:
        check_split(input_dir)  # a damaged local index or chunk: one line naming the file, before litdata reads it
        url = input_dir if isinstance(input_dir, str) else getattr(input_dir, "url", None)
        try:
            if url and is_remote(url):  # a missing bucket or key, no credentials: one line naming the URL
                allow_http_endpoint()
                with storage_errors(url):
                    super().__init__(input_dir=input_dir, **kwargs)
            else:
                super().__init__(input_dir=input_dir, **kwargs)
        except (ValueError, KeyError, OSError) as err:  # a truncated or foreign index.json (JSONDecodeError...)
            if not isinstance(input_dir, str) or is_remote(input_dir):
                raise
            index = os.path.join(input_dir, "index.json")
            raise GenLIPUserError(f"{index} is not a readable litdata index ({type(err).__name__}: {err}); "
                                  f"{FIX}") from err
        # not `self.transform`: StreamingDataset applies an attribute of that name to raw items itself
        self.image_transform = transform
        self.caption_encoder = caption_encoder
        self.source_dir = input_dir
        self.packed = isinstance(transform, NativeResTransform)  # its loader packs (PackingCollator)
        self.stream_id = 0  # position in a mixture: salts the augmentation seeds (see `_augmentation_rng`)
        self._warned = False

    def _augmentation_rng(self, index: Any) -> torch.Generator | None:
        """The random crop's RNG for this sample: seeded by (data seed, stream, epoch, sample index), all part of
        the loader's resumable state, so a resumed run crops every sample as the uninterrupted one (whatever
        the worker count or prefetching); None for transforms without randomness."""
        if not (isinstance(self.image_transform, FixedResTransform) and self.image_transform.train):
            return None
        sample = int(getattr(index, "index", index))
        seq = np.random.SeedSequence([int(self.seed), int(self.stream_id), int(self.current_epoch), sample])
        return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))

    def __getitem__(self, index: Any) -> Any:
        try:
            raw = super().__getitem__(index)
        except READ_ERRORS as err:  # bytes damaged in place: one line naming the chunk (also from a worker)
            raise damaged_read(self.source_dir, index, err) from err
        if isinstance(raw, list):  # slice access
            return [self._process(r, index) for r in raw]
        return self._process(raw, index)

    def _process(self, raw: dict[str, Any], index: Any) -> dict[str, Any] | None:
        for key in ("image", "caption"):
            if key not in raw:
                raise GenLIPUserError(
                    f"samples in {self.source_dir!r} have no {key!r} field (found {sorted(raw)}): "
                    "write the shards with `genlip optimize`"
                )
        key = raw.get("key")
        try:
            image = decode_image(raw["image"])
        except ValueError as exc:
            if not self._warned:
                self._warned = True
                i = getattr(index, "index", index)
                if key is not None:
                    i = f"{i} (key {key})"
                log.warning(
                    "skipping sample %s of %s: %s (further bad samples in this worker are skipped silently; "
                    "Batch.num_skipped counts them)",
                    i,
                    self.source_dir,
                    exc,
                )
            return None
        truncated_before, unknown_before = self.caption_encoder.num_truncated, self.caption_encoder.num_unknown
        ids, mask = self.caption_encoder.encode(str(raw["caption"]))
        rng = self._augmentation_rng(index)
        pixels = (self.image_transform.to_uint8(image) if rng is None  # normalized after the device transfer
                  else self.image_transform.to_uint8(image, generator=rng))
        # per-patch label maps describe the stored image: a resized or cropped one no longer matches them
        same_size = tuple(pixels.shape[1:]) == (image.size[1], image.size[0])
        return {
            "pixel_values": pixels,
            "input_ids": ids,
            "loss_mask": mask,
            "truncated": self.caption_encoder.num_truncated > truncated_before,
            "unknown": self.caption_encoder.num_unknown - unknown_before,
            "key": None if key is None else str(key),
            "caption": str(raw["caption"]),
            "label": int(raw.get("label", -1)),
            "patch_shape": raw.get("patch_shape") if same_size else None,
            "patch_color": raw.get("patch_color") if same_size else None,
        }


class BatchCollator:
    """Processed samples -> `Batch` of uint8 pixels; drops None (undecodable) samples and counts them.

    Pixels stay uint8 until `Batch.normalized()` (the datamodule calls it after the transfer to the device): a
    float32 batch is 4x the bytes to stack, to pass through shared memory and to copy to the GPU, which cost
    this loader about 40% of its throughput (benchmarks/bench_data.py).
    """

    def __init__(
        self,
        caption_encoder: CaptionEncoder,
        image_size: int,
        mean: tuple[float, float, float] = DEFAULT_MEAN,
        std: tuple[float, float, float] = DEFAULT_STD,
    ) -> None:
        self.caption_encoder = caption_encoder
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)

    @staticmethod
    def _maps(items: list[dict[str, Any]], key: str) -> torch.Tensor | None:
        values = [x.get(key) for x in items]
        if not values or any(v is None for v in values) or len({np.shape(v) for v in values}) > 1:
            return None
        return torch.from_numpy(np.stack([np.asarray(v) for v in values])).long()

    def __call__(self, items: list[dict[str, Any] | None]) -> Batch:
        kept = [x for x in items if x is not None]
        s = self.image_size
        # default_collate stacks straight into shared memory inside a loader worker (no extra copy to send it)
        pixels = default_collate([x["pixel_values"] for x in kept]) if kept else torch.zeros(0, 3, s, s, dtype=torch.uint8)
        input_ids, loss_mask, text_mask = self.caption_encoder.collate_text(
            [(x["input_ids"], x["loss_mask"]) for x in kept]
        )
        return Batch(
            pixel_values=pixels,
            input_ids=input_ids,
            loss_mask=loss_mask,
            text_mask=text_mask,
            labels=torch.tensor([x["label"] for x in kept], dtype=torch.long),
            patch_shape=self._maps(kept, "patch_shape"),
            patch_color=self._maps(kept, "patch_color"),
            captions=[x["caption"] for x in kept],
            keys=[x["key"] for x in kept] if all(x.get("key") is not None for x in kept) else [],
            num_skipped=len(items) - len(kept),
            num_truncated=sum(bool(x.get("truncated")) for x in kept),
            num_unknown=sum(int(x.get("unknown") or 0) for x in kept),
            pixel_mean=self.mean,
            pixel_std=self.std,
        )


class ResumableStreamingDataLoader(litdata.StreamingDataLoader):
    """`StreamingDataLoader` whose resumed epoch ends when the trainer moves on to the next epoch.

    After `load_state_dict`, litdata replays from the saved position and clears its `restore` flag only when that
    iteration runs into StopIteration. Lightning stops an epoch by batch count (it knows the remaining length), so
    the flag survives and the NEXT epoch replays the resumed remainder again instead of reshuffling. Here a new
    `__iter__` after the restored one has yielded batches clears the flag: the resumed run then sees the same
    samples, in the same order, as a run that never stopped.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded_since_restore = 0

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        super().load_state_dict(obj)
        self._yielded_since_restore = 0

    def __iter__(self) -> Any:
        if getattr(self, "restore", False) and self._yielded_since_restore > 0:
            self.restore = False  # the resumed epoch was consumed; start the next one afresh
        for batch in super().__iter__():
            self._yielded_since_restore += 1
            yield batch
