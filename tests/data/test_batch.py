"""Batch: the dataclass data and models share must move through Lightning's collection utilities."""

from __future__ import annotations

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection

from genlip_lit.data.batch import Batch


def _batch(b: int = 3, length: int = 5) -> Batch:
    return Batch(
        pixel_values=torch.randn(b, 3, 8, 8),
        input_ids=torch.arange(b * length).view(b, length),
        loss_mask=torch.ones(b, length, dtype=torch.bool),
        text_mask=torch.ones(b, length, dtype=torch.bool),
        labels=torch.arange(b),
        patch_shape=torch.zeros(b, 2, 2, dtype=torch.long),
        captions=[f"c{i}" for i in range(b)],
        num_skipped=2,
    )


def test_len_and_to_keeps_values() -> None:
    batch = _batch()
    assert len(batch) == 3
    moved = batch.to("cpu")
    assert moved is not batch
    assert torch.equal(moved.input_ids, batch.input_ids)
    assert moved.captions == batch.captions and moved.num_skipped == 2
    assert moved.patch_color is None and moved.position_ids is None


def test_to_changes_device_of_every_tensor() -> None:
    batch = _batch()
    moved = batch.to("meta")
    for name in ("pixel_values", "input_ids", "loss_mask", "text_mask", "labels", "patch_shape"):
        assert getattr(moved, name).device.type == "meta", name
    assert batch.pixel_values.device.type == "cpu"  # the original is untouched


def test_lightning_move_data_to_device_handles_batch() -> None:
    batch = _batch()
    moved = move_data_to_device(batch, torch.device("meta"))
    assert isinstance(moved, Batch)
    assert moved.pixel_values.device.type == "meta" and moved.labels.device.type == "meta"
    assert moved.captions == batch.captions and moved.num_skipped == batch.num_skipped


def test_apply_to_collection_maps_tensor_fields() -> None:
    # precision plugins and loggers walk batches with apply_to_collection(dtype=Tensor)
    batch = _batch()
    halved = apply_to_collection(
        batch, torch.Tensor, lambda t: t.to(torch.float16) if t.is_floating_point() else t
    )
    assert isinstance(halved, Batch)
    assert halved.pixel_values.dtype == torch.float16
    assert halved.input_ids.dtype == torch.long
    assert halved.captions == batch.captions and halved.num_skipped == 2
    assert batch.pixel_values.dtype == torch.float32
