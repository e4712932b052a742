"""Contracts with the private or undocumented parts of libraries genlip_lit relies on.

Each test pins one behaviour our code builds on, so that an upgrade beyond `constraints.txt` (the versions the
suite ran with) fails here, loudly and by name, instead of silently changing a result elsewhere:
- litdata: BinaryWriter names chunks and its index after DATA_OPTIMIZER_GLOBAL_RANK (ingest/unit_writer.py), the index
  layout merge_split writes, and StreamingDataLoader's `restore` flag around load_state_dict
  (data/streaming.py ResumableStreamingDataLoader); the obstore client options table (storage.allow_http_endpoint)
  and the `_on_demand_bytes` switch its cache is built with (storage.streaming_dataset);
- torch: `_python_dispatch._get_current_dispatch_mode` (models/attention.py), the CPU flash-attention ops and
  flop-count helpers the Throughput callback maps, DataLoader's `_iterator._shutdown_workers`
  (data/streaming.py shutdown_workers), FSDP2 and FlexAttention imports;
- open_clip: SimpleTokenizer's `encoder`, `bpe`, `pat` and special ids (data/tokenizer.py's fast ASCII path);
- Lightning: ModelCheckpoint internals ResumableCheckpoint calls, LightningCLI's `_instantiate_trainer` and the
  `_device_mesh` attribute ModelParallelStrategy sets (modules/base.py).
"""

from __future__ import annotations

import inspect
import json
import os
import time

import pytest
import torch

# ------------------------------------------------------------------ litdata


def _write_unit(out_dir: str, unit_id: int, count: int) -> dict:
    """Write `count` samples as genlip's corpus writer does; return the unit index litdata wrote."""
    from litdata.streaming.writer import BinaryWriter

    before = os.environ.get("DATA_OPTIMIZER_GLOBAL_RANK")
    os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = str(unit_id)
    try:
        writer = BinaryWriter(out_dir, chunk_bytes="64MB")
        for i in range(count):
            writer.add_item(i, {"caption": f"sample {i}", "key": str(i), "label": i})
        writer.done()
    finally:
        if before is None:
            os.environ.pop("DATA_OPTIMIZER_GLOBAL_RANK", None)
        else:
            os.environ["DATA_OPTIMIZER_GLOBAL_RANK"] = before
    with open(os.path.join(out_dir, f"{unit_id}.index.json"), encoding="utf-8") as fh:
        return json.load(fh)


def test_litdata_writer_names_chunks_and_index_after_the_rank_variable(tmp_path):
    index = _write_unit(str(tmp_path), unit_id=7, count=5)
    assert (tmp_path / "7.index.json").is_file()
    chunk_files = [c["filename"] for c in index["chunks"]]
    assert chunk_files and all(name.startswith("chunk-7-") and name.endswith(".bin") for name in chunk_files)
    assert sum(int(c["chunk_size"]) for c in index["chunks"]) == 5
    assert "data_format" in index["config"]  # merge_split compares it across units


@pytest.fixture(scope="module")
def tiny_litdata(tmp_path_factory) -> str:
    """A 12-sample split merged as ingest/corpus.py merge_split writes it."""
    out = str(tmp_path_factory.mktemp("litdata"))
    index = _write_unit(out, unit_id=0, count=12)
    with open(os.path.join(out, "index.json"), "w", encoding="utf-8") as fh:
        json.dump({"chunks": index["chunks"], "config": index["config"], "updated_at": str(time.time())}, fh)
    return out


def test_litdata_reads_a_merged_index_and_restores_the_loader_position(tiny_litdata):
    import litdata

    dataset = litdata.StreamingDataset(tiny_litdata, shuffle=False)
    assert len(dataset) == 12 and dataset[3]["caption"] == "sample 3"
    loader = litdata.StreamingDataLoader(dataset, batch_size=2, num_workers=0)
    seen = []
    for step, batch in enumerate(loader):
        seen += list(batch["caption"])
        if step == 1:
            state = loader.state_dict()
            break
    resumed = litdata.StreamingDataLoader(litdata.StreamingDataset(tiny_litdata, shuffle=False), batch_size=2,
                                          num_workers=0)
    resumed.load_state_dict(state)
    # ResumableStreamingDataLoader reads and clears this flag: set by load_state_dict ...
    assert resumed.restore is True
    rest = [c for batch in resumed for c in batch["caption"]]
    assert rest == [f"sample {i}" for i in range(4, 12)]  # ... replays from the saved position ...
    assert resumed.restore is False  # ... and clears it when the resumed epoch runs out


# ------------------------------------------------------------------ torch


def test_litdata_obstore_options_and_on_demand_switch_used_for_object_storage(tmp_path):
    from litdata.streaming import downloader
    from litdata.streaming.dataset import StreamingDataset

    assert isinstance(downloader._OBSTORE_CLIENT_OPTIONS, dict)  # allow_http is added to it for http endpoints
    assert "self._on_demand_bytes" in inspect.getsource(StreamingDataset._create_cache)
    assert "on_demand_bytes" in inspect.signature(__import__("litdata").streaming.cache.Cache).parameters


def test_torch_current_dispatch_mode_reports_an_active_mode():
    from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    assert _get_current_dispatch_mode() is None
    with Passthrough():
        assert isinstance(_get_current_dispatch_mode(), Passthrough)


def test_torch_flop_counter_helpers_and_cpu_flash_ops():
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    q = k = v = (2, 4, 16, 8)  # B, H, N, head_dim
    assert sdpa_flop_count(q, k, v) == 2 * (2 * 2 * 4 * 16 * 16 * 8)  # QK^T and AV
    assert sdpa_backward_flop_count(q, q, k, v) > sdpa_flop_count(q, k, v)
    aten = torch.ops.aten  # callbacks/throughput.py counts these CPU kernels itself
    assert hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu")
    assert hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward")


def test_torch_dataloader_iterator_shutdown_hook():
    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter

    loader = DataLoader(list(range(4)), batch_size=2, num_workers=0)
    assert hasattr(loader, "_iterator")
    assert callable(getattr(_MultiProcessingDataLoaderIter, "_shutdown_workers", None))


def test_torch_fsdp2_and_flex_attention_imports():
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method  # noqa: F401
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401


# ------------------------------------------------------------------ open_clip


def test_open_clip_simple_tokenizer_internals_match_its_encode():
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    assert len(tok.encoder) == 49408
    text = "a small red circle and a large blue square, with the word 'hello' 42"
    fast = [tok.encoder[piece] for word in tok.pat.findall(text) for piece in tok.bpe(word).split(" ")]
    assert fast == tok.encode(text)  # data/tokenizer.py skips ftfy/html for plain ASCII on this equality
    assert tok.sot_token_id == tok.encoder["<start_of_text>"] and tok.eot_token_id == tok.encoder["<end_of_text>"]


# ------------------------------------------------------------------ Lightning


def test_model_checkpoint_internals_used_by_resumable_checkpoint():
    from lightning.pytorch.callbacks import ModelCheckpoint

    ckpt = ModelCheckpoint(every_n_train_steps=3)
    assert ckpt._every_n_train_steps == 3
    for name, params in {
        "_should_skip_saving_checkpoint": ["trainer"],
        "_monitor_candidates": ["trainer"],
        "_save_topk_checkpoint": ["trainer", "monitor_candidates"],
        "_save_last_checkpoint": ["trainer", "monitor_candidates"],
    }.items():
        assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters)[1:] == params, name


def test_lightning_cli_and_module_hooks_genlip_overrides():
    import lightning as L
    from lightning.pytorch.cli import LightningCLI

    assert list(inspect.signature(LightningCLI._instantiate_trainer).parameters)[1:] == ["config", "callbacks"]
    assert "auto_configure_optimizers" in inspect.signature(LightningCLI.__init__).parameters
    assert "parser_class" in inspect.signature(LightningCLI.__init__).parameters
    module = L.LightningModule()
    assert module._device_mesh is None  # set by ModelParallelStrategy; modules/base.py configure_model reads it
