"""GenLIPDataModule: shards -> Batch, skipping corrupt images, synthetic cache, determinism, resume."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from helpers import TESTS

from genlip_lit.data import datamodule as dm_mod
from genlip_lit.data.batch import Batch
from genlip_lit.data.datamodule import BatchCollator, GenLIPDataModule, shutdown_workers
from genlip_lit.data.shards import optimize_synthetic, synthetic_sample, write_shards
from genlip_lit.data.synthetic import SceneConfig
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError

SCENE = SceneConfig(image_size=32, patch_size=8)
PROMPT = "describe the image."


@pytest.fixture(scope="module")
def encoder() -> CaptionEncoder:
    return CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), prompt=PROMPT, max_len=64)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("dm") / "shapes")
    optimize_synthetic(out, num_train=64, num_val=16, seed=0, scene=SCENE)
    return out


def _dm(data_dir: str, encoder: CaptionEncoder, **kw) -> GenLIPDataModule:
    kw = {"image_size": 32, "batch_size": 8, "num_workers": 0, **kw}
    dm = GenLIPDataModule(data_dir=data_dir, caption_encoder=encoder, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _captions(loader) -> list[str]:
    return [c for batch in loader for c in batch.captions]


def test_batches(data_dir, encoder) -> None:
    dm = _dm(data_dir, encoder, mean=(0.4, 0.5, 0.6), shuffle=False)
    tok = encoder.tokenizer
    n_head = len(encoder.prompt_ids())
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 64 and len(batches) == 8
    b = batches[0]
    assert isinstance(b, Batch) and len(b) == 8 and b.num_skipped == 0
    # loaders ship uint8; normalized() (the datamodule's on_after_batch_transfer) gives (x/255 - mean) / std
    assert b.pixel_values.shape == (8, 3, 32, 32) and b.pixel_values.dtype == torch.uint8
    assert (b.pixel_mean, b.pixel_std) == ((0.4, 0.5, 0.6), (0.5, 0.5, 0.5))
    normed = b.normalized()
    x = normed.pixel_values
    assert x.dtype == torch.float32 and normed.normalized() is normed
    mean = torch.tensor([0.4, 0.5, 0.6]).view(3, 1, 1)
    assert torch.allclose(x, (b.pixel_values.float() / 255 - mean) / 0.5, atol=1e-6)
    assert dm.on_after_batch_transfer(b, 0).pixel_values.dtype == torch.float32
    assert b.input_ids.dtype == torch.long and b.loss_mask.dtype == b.text_mask.dtype == torch.bool
    assert b.labels.shape == (8,) and b.labels.dtype == torch.long
    assert b.patch_shape.shape == b.patch_color.shape == (8, 4, 4) and b.patch_shape.dtype == torch.long
    for row in range(8):
        n = int(b.text_mask[row].sum())
        assert b.text_mask[row, :n].all() and not b.text_mask[row, n:].any()
        ids = b.input_ids[row]
        assert ids[:n_head].tolist() == encoder.prompt_ids() and ids[n - 1] == tok.eos_id
        assert (ids[n:] == tok.pad_id).all()
        # loss on caption + EOS only: never BOS, prompt or pad
        expected = torch.zeros_like(b.loss_mask[row])
        expected[n_head:n] = True
        assert torch.equal(b.loss_mask[row], expected)
        assert tok.decode(ids[b.loss_mask[row]].tolist()) == b.captions[row]
    # unshuffled order is the stored (generation) order
    from genlip_lit.data.synthetic import generate_scene

    assert b.captions[:2] == [generate_scene(0, i, SCENE).caption for i in range(2)]
    assert b.labels[:2].tolist() == [generate_scene(0, i, SCENE).label for i in range(2)]
    val = list(dm.val_dataloader())
    assert sum(len(v) for v in val) == 16
    assert _captions(dm.test_dataloader()) == _captions(dm.predict_dataloader()) == _captions(val)


def test_eval_pixels_are_deterministic(data_dir, encoder) -> None:
    dm = _dm(data_dir, encoder)
    a = next(iter(dm.val_dataloader())).pixel_values
    b = next(iter(dm.val_dataloader())).pixel_values
    assert torch.equal(a, b)


def _corrupt_sample(index: int, bad: int) -> dict:
    sample = synthetic_sample(index, 5, SceneConfig(image_size=16, patch_size=8))
    if index == bad:
        sample["image"] = b"\x89PNG garbage, not an image"
    return sample


def test_corrupt_image_is_skipped_and_counted(tmp_path, encoder, caplog) -> None:
    root = tmp_path / "bad"
    for split in ("train", "val"):
        write_shards(functools.partial(_corrupt_sample, bad=3), 10, str(root / split))
    dm = _dm(str(root), encoder, image_size=16, batch_size=4, shuffle=False)
    with caplog.at_level(logging.WARNING, logger=dm_mod.__name__):
        batches = list(dm.train_dataloader())
    assert [b.num_skipped for b in batches] == [1, 0, 0]  # sample 3 sits in the first batch
    assert [len(b) for b in batches] == [3, 4, 2]
    assert sum(len(b) + b.num_skipped for b in batches) == 10
    assert batches[0].pixel_values.shape[0] == batches[0].input_ids.shape[0] == len(batches[0].captions) == 3
    warnings = [r for r in caplog.records if "skipping sample 3" in r.getMessage()]
    assert len(warnings) == 1 and str(root / "train") in warnings[0].getMessage()
    # a batch in which nothing decodes is empty but well formed
    empty = BatchCollator(encoder, 16)([None, None])
    assert len(empty) == 0 and empty.num_skipped == 2 and empty.pixel_values.shape == (0, 3, 16, 16)


def test_unfinished_optimize_output_says_how_to_finish_it(tmp_path, encoder, monkeypatch) -> None:
    """It used to say "create it with genlip optimize" about a directory an interrupted optimize left."""
    import io

    from PIL import Image

    from genlip_lit.ingest import corpus, sources
    from genlip_lit.ingest.layouts import open_source

    monkeypatch.setattr(sources, "FILES_PER_UNIT", 1)
    (tmp_path / "in").mkdir()
    for i in range(2):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), (i * 90, 0, 0)).save(buffer, format="PNG")
        (tmp_path / "in" / f"{i}.png").write_bytes(buffer.getvalue() if i == 0 else b"<html>")
        (tmp_path / "in" / f"{i}.txt").write_text("a box")
    real = corpus.process_unit
    monkeypatch.setattr(corpus, "process_unit", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    out = str(tmp_path / "out")
    command = "genlip optimize --input in --output out --resume"
    monkeypatch.chdir(tmp_path)  # where the command is typed
    with pytest.raises(corpus.IngestStopped):
        corpus.optimize_corpus(open_source(["in"]), "out", resume_command=command)
    with pytest.raises(GenLIPUserError, match=f"holds an unfinished `genlip optimize` run: finish it with `{command}`"):
        GenLIPDataModule(data_dir=out, caption_encoder=encoder).prepare_data()
    monkeypatch.chdir(tmp_path / "in")  # elsewhere, its relative paths need the directory it was typed in
    with pytest.raises(GenLIPUserError, match=f"finish it with `cd {tmp_path} && {command}`"):
        GenLIPDataModule(data_dir=out, caption_encoder=encoder).prepare_data()
    # all skipped: the message says so instead of asking to finish
    monkeypatch.setattr(corpus, "process_unit", real)
    monkeypatch.setattr(sources, "FILES_PER_UNIT", 1000)
    with pytest.raises(GenLIPUserError, match="kept 0"):
        corpus.optimize_corpus(open_source([str(tmp_path / "in" / "1.png")]), out, mode="overwrite")
    with pytest.raises(GenLIPUserError, match="holds no samples: `genlip optimize` skipped every one"):
        GenLIPDataModule(data_dir=out, caption_encoder=encoder).prepare_data()


def test_missing_data_dir_names_path(tmp_path, encoder) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(GenLIPUserError, match="genlip optimize --input SRC") as info:
        GenLIPDataModule(data_dir=missing, caption_encoder=encoder).prepare_data()
    assert missing in str(info.value)
    os.makedirs(missing)
    with pytest.raises(GenLIPUserError, match="has no train/ litdata shards"):
        GenLIPDataModule(data_dir=missing, caption_encoder=encoder).setup("fit")
    with pytest.raises(GenLIPUserError, match="data_dir"):
        GenLIPDataModule()


def test_synthetic_cache(tmp_path, encoder, monkeypatch) -> None:
    params = {"num_train": 8, "num_val": 4, "image_size": 16, "patch_size": 8, "max_objects": 2}
    dm = GenLIPDataModule(
        synthetic=params,
        cache_dir=str(tmp_path),
        image_size=16,
        caption_encoder=encoder,
        num_workers=0,
        batch_size=4,
    )
    assert dm.data_dir.startswith(str(tmp_path / "synthetic"))
    dm.prepare_data()
    dm.setup("fit")
    assert sum(len(b) for b in dm.train_dataloader()) == 8
    assert sorted(os.listdir(tmp_path / "synthetic")) == [os.path.basename(dm.data_dir)]  # no temp dirs left

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing cache")

    monkeypatch.setattr(dm_mod, "optimize_synthetic", fail)
    again = GenLIPDataModule(synthetic=dict(params), cache_dir=str(tmp_path), caption_encoder=encoder)
    assert again.data_dir == dm.data_dir
    again.prepare_data()  # reuses the cache
    other = GenLIPDataModule(
        synthetic={**params, "seed": 1}, cache_dir=str(tmp_path), caption_encoder=encoder
    )
    assert other.data_dir != dm.data_dir
    monkeypatch.setenv("GENLIP_CACHE", str(tmp_path / "env"))
    assert GenLIPDataModule(synthetic=params).data_dir.startswith(str(tmp_path / "env"))
    with pytest.raises(GenLIPUserError, match="num_samples"):
        GenLIPDataModule(synthetic={"num_samples": 3})
    with pytest.raises(GenLIPUserError, match="patch_size"):
        GenLIPDataModule(synthetic={"image_size": 20})


def test_shuffle_is_deterministic_by_seed(data_dir, encoder) -> None:
    first = _captions(_dm(data_dir, encoder, seed=1).train_dataloader())
    assert first == _captions(_dm(data_dir, encoder, seed=1).train_dataloader())
    other = _captions(_dm(data_dir, encoder, seed=2).train_dataloader())
    stored = _captions(_dm(data_dir, encoder, shuffle=False).train_dataloader())
    assert first != other and first != stored
    assert Counter(first) == Counter(other) == Counter(stored)


def test_one_worker_matches_in_process(data_dir, encoder) -> None:
    in_process = _captions(_dm(data_dir, encoder, shuffle=False).val_dataloader())
    loader = _dm(data_dir, encoder, shuffle=False, num_workers=1).val_dataloader()
    assert loader.persistent_workers
    assert _captions(loader) == in_process
    assert _captions(loader) == in_process  # second epoch on the same (persistent) worker
    start = time.perf_counter()
    shutdown_workers(loader)
    assert (
        time.perf_counter() - start < 2.0
    )  # without it, gc would hang 5 s per worker (see shutdown_workers)


def test_connect_hands_over_the_models_settings_and_hparams(data_dir, encoder) -> None:
    dm = GenLIPDataModule(data_dir=data_dir, image_size=32, std=(0.2, 0.3, 0.4))
    assert dm.hparams["image_size"] == 32 and tuple(dm.hparams["std"]) == (0.2, 0.3, 0.4)
    assert "caption_encoder" not in dm.hparams
    with pytest.raises(GenLIPUserError, match="connect"):
        dm.setup("fit")
    # a trainer's module is never consulted: only connect() hands the model's settings over
    dm.trainer = SimpleNamespace(lightning_module=SimpleNamespace(caption_encoder=encoder))
    with pytest.raises(GenLIPUserError, match="connect"):
        dm.setup("fit")
    dm.connect(caption_encoder=encoder, patch_size=8, num_registers=2)
    dm.setup("fit")
    assert dm.train_dataset.caption_encoder is encoder and (dm.patch_size, dm.num_registers) == (8, 2)
    # what the user set wins over the model's
    other = CaptionEncoder(encoder.tokenizer, None, 16)
    mine = GenLIPDataModule(data_dir=data_dir, caption_encoder=other, patch_size=16)
    mine.connect(caption_encoder=encoder, patch_size=8, num_registers=1)
    assert mine.caption_encoder is other and mine.patch_size == 16 and mine.num_registers == 1


def test_every_objective_connects_its_settings(data_dir) -> None:
    """EncoderModule.data_settings() is what connect() takes, for every objective (no getattr on a trainer)."""
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule

    tiny = {"depth": 1, "width": 32, "num_heads": 2, "ffn_hidden": 64, "num_registers": 2}
    for cls in (GenLIPModule, CaptionerModule, ContrastiveModule):
        module = cls(arch_overrides=tiny, tokenizer=OpenCLIPTokenizer(compact_corpus="synthetic"), max_text_len=24)
        dm = GenLIPDataModule(data_dir=data_dir, image_size=32, num_workers=0)
        dm.connect(**module.data_settings())
        assert dm.caption_encoder is module.caption_encoder and dm.caption_encoder.max_len == 24, cls
        assert (dm.patch_size, dm.num_registers) == (8, 2), cls


def test_loader_state_resumes_mid_epoch(data_dir, encoder) -> None:
    loader = _dm(data_dir, encoder, seed=4).train_dataloader()
    full = [b.captions for b in loader]
    loader = _dm(data_dir, encoder, seed=4).train_dataloader()
    it = iter(loader)
    seen = [next(it).captions for _ in range(3)]
    state = loader.state_dict()
    resumed = _dm(data_dir, encoder, seed=4).train_dataloader()
    resumed.load_state_dict(state)
    assert seen + [b.captions for b in resumed] == full


class _TinyModule(L.LightningModule):
    """Just enough of a model: owns the caption encoder, consumes Batch."""

    def __init__(self, encoder: CaptionEncoder) -> None:
        super().__init__()
        self.caption_encoder = encoder
        self.w = torch.nn.Parameter(torch.zeros(3))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        assert isinstance(batch, Batch)
        return (self.w[None] * batch.pixel_values.mean((2, 3))).sum() + batch.loss_mask.float().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_trainer_checkpoint_holds_loader_state_and_hparams(data_dir, encoder, tmp_path) -> None:
    dm = GenLIPDataModule(data_dir=data_dir, image_size=32, batch_size=8, num_workers=0)
    dm.connect(caption_encoder=encoder)
    trainer = L.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(_TinyModule(encoder), datamodule=dm)
    path = str(tmp_path / "last.ckpt")
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["image_size"] == 32
    loader_states = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_states[0]["num_samples_yielded"] == 24


class _KeyRecorder(_TinyModule):
    """Remembers the key of every sample it trains on, in order."""

    def __init__(self, encoder: CaptionEncoder) -> None:
        super().__init__(encoder)
        self.seen: list[str] = []

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.seen.extend(batch.keys)
        return super().training_step(batch, batch_idx)


def _fit(data_dir, encoder, max_steps, num_workers, ckpt_dir=None, ckpt_path=None) -> _KeyRecorder:
    from genlip_lit.callbacks.checkpoint import ResumableCheckpoint

    callbacks = [] if ckpt_dir is None else [ResumableCheckpoint(dirpath=ckpt_dir, every_n_train_steps=4, save_last=True)]
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=ckpt_dir is not None,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    module = _KeyRecorder(encoder)
    dm = GenLIPDataModule(data_dir=data_dir, image_size=32, batch_size=8, num_workers=num_workers, seed=7)
    dm.connect(caption_encoder=encoder)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
    return module


@pytest.mark.parametrize("num_workers", [0, 2])
def test_trainer_resume_continues_the_epoch_exactly(data_dir, encoder, tmp_path, num_workers) -> None:
    # 64 samples, batch 8: 8 steps an epoch; stop at step 5 (a max_steps stop, not on the checkpoint interval),
    # resume to step 14, crossing into the reshuffled second epoch
    full = _fit(data_dir, encoder, 14, num_workers).seen
    assert len(full) == 14 * 8 and sorted(full[:64]) == sorted(f"0/{i}" for i in range(64))
    first = _fit(data_dir, encoder, 5, num_workers, ckpt_dir=tmp_path)
    assert os.path.exists(tmp_path / "last.ckpt")
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["global_step"] == 5
    rest = _fit(data_dir, encoder, 14, num_workers, ckpt_path=str(tmp_path / "last.ckpt")).seen
    assert first.seen + rest == full


def _ddp_keys(data_dir: str, out, num_workers: int, drop_last: str) -> tuple[list[list[list[str]]], str]:
    """Keys each of 2 gloo ranks saw per epoch (launched like a user would, through torch.distributed.run)."""
    import subprocess
    import sys

    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(TESTS, "ddp_data_worker.py"), "--data-dir", data_dir, "--out", str(out),
           "--num-workers", str(num_workers), "--drop-last", drop_last]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.load(open(out / f"rank{r}.json"))["epochs"] for r in (0, 1)]
    return ranks, done.stderr


def test_ddp_ranks_share_each_epoch_exactly_once(data_dir, tmp_path) -> None:
    ranks, _ = _ddp_keys(data_dir, tmp_path / "even", num_workers=2, drop_last="default")
    everything = sorted(f"0/{i}" for i in range(64))
    for epoch in (0, 1):
        seen = ranks[0][epoch] + ranks[1][epoch]
        assert sorted(seen) == everything  # union is the dataset, nothing twice
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) == 32  # same number of steps on both ranks
    assert ranks[0][0] != ranks[0][1]  # reshuffled between epochs


def _as_rank(monkeypatch, rank: int, world: int) -> None:
    """This process as rank `rank` of `world` for litdata (its environment variables) and for the data module."""
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("GLOBAL_RANK", str(rank))
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda *a: world)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda *a: rank)


def test_small_val_split_gives_every_rank_a_batch_or_is_refused(data_dir, encoder, monkeypatch, caplog) -> None:
    # 16 val samples, val batch 8, 3 ranks: litdata deals whole batches (16 // 8 = 2 for 3 ranks), so one rank
    # had none and Lightning stopped it at the start while the others waited; the batch shrinks to 16 // 3
    seen = []
    for rank in range(3):
        _as_rank(monkeypatch, rank, 3)
        with caplog.at_level(logging.INFO, logger="genlip_lit"):
            loader = _dm(data_dir, encoder, shuffle=False, val_batch_size=8).val_dataloader()
        assert len(loader) >= 1 and loader.batch_size == 5
        seen += _captions(loader)
    assert len(seen) == 16  # every sample once, spread over the ranks
    assert "val batch 8 -> 5: each of the 3 ranks gets a batch of the 16 val samples" in caplog.text
    _as_rank(monkeypatch, 0, 17)  # fewer samples than ranks: refused the same way on every rank, before fit
    with pytest.raises(GenLIPUserError, match=r"val split of .* has 16 samples for 17 ranks: every rank needs"):
        _dm(data_dir, encoder)


def test_ddp_uneven_dataset_keeps_or_announces_the_remainder(tmp_path) -> None:
    uneven = str(tmp_path / "uneven")
    optimize_synthetic(uneven, num_train=60, num_val=4, seed=0, scene=SCENE)
    everything = sorted(f"0/{i}" for i in range(60))
    ranks, _ = _ddp_keys(uneven, tmp_path / "keep", num_workers=0, drop_last="false")
    for epoch in (0, 1):
        assert sorted(ranks[0][epoch] + ranks[1][epoch]) == everything
    ranks, log = _ddp_keys(uneven, tmp_path / "drop", num_workers=0, drop_last="default")
    seen = ranks[0][0] + ranks[1][0]
    assert len(seen) == len(set(seen)) and set(seen) <= set(everything)
    assert len(ranks[0][0]) == len(ranks[1][0])
    assert f"{60 - len(seen)} of 60 samples" in log  # the dropped remainder is announced, not silent
    assert "disabled the `drop_last`" not in log  # litdata's warning fits training sets, not evaluation ones


@pytest.fixture(scope="module")
def second_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("dm2") / "more")
    optimize_synthetic(out, num_train=32, num_val=8, seed=5, scene=SCENE)
    return out


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch.keys]


def test_mixture_without_weights_reads_every_dataset_once(data_dir, second_dir, encoder) -> None:
    dm = GenLIPDataModule(data_dir=[data_dir, second_dir], image_size=32, batch_size=8, num_workers=0,
                          caption_encoder=encoder)
    dm.setup("fit")
    seen = _keys(dm.train_dataloader())
    assert sorted(seen) == sorted([f"0/{i}" for i in range(64)] + [f"5/{i}" for i in range(32)])
    val = _keys(dm.val_dataloader())  # validation covers both val splits, in full
    assert sorted(val) == sorted([f"1000003/{i}" for i in range(16)] + [f"1000008/{i}" for i in range(8)])


def test_mixture_weights_set_the_sampling_ratio(data_dir, second_dir, encoder) -> None:
    def share_of_second(weights) -> float:
        dm = GenLIPDataModule(data_dir=[data_dir, second_dir], weights=weights, image_size=32, batch_size=8,
                              num_workers=0, caption_encoder=encoder, seed=1)
        dm.setup("fit")
        seen = _keys(dm.train_dataloader())
        assert len(seen) == len(set(seen))  # weighted draws never repeat a sample within the epoch
        return sum(k.startswith("5/") for k in seen) / len(seen)

    assert share_of_second([9, 1]) < 0.25 < share_of_second([1, 1]) < 0.75 < share_of_second([1, 9])
    with pytest.raises(GenLIPUserError, match="2 data_dir"):
        GenLIPDataModule(data_dir=[data_dir, second_dir], weights=[1.0])
    with pytest.raises(GenLIPUserError, match="positive"):
        GenLIPDataModule(data_dir=[data_dir, second_dir], weights=[1.0, 0.0])


def test_dataset_without_val_split_trains_without_validation(data_dir, tmp_path, encoder, caplog) -> None:
    import shutil

    only_train = tmp_path / "only_train"
    shutil.copytree(os.path.join(data_dir, "train"), only_train / "train")
    dm = GenLIPDataModule(data_dir=str(only_train), image_size=32, batch_size=8, num_workers=0,
                          caption_encoder=encoder)
    with caplog.at_level(logging.WARNING, logger=dm_mod.__name__):
        dm.setup("fit")
    assert dm.val_dataloader() == [] and "no val/ split" in caplog.text
    assert len(_keys(dm.train_dataloader())) == 64


def test_remote_dir_streams_through_the_cache(data_dir, tmp_path, encoder) -> None:
    # litdata's "local:" scheme takes the remote code path (download chunks into a cache) without a network
    cache = tmp_path / "cache"
    dm = GenLIPDataModule(data_dir=f"local:{data_dir}", cache_dir=str(cache), image_size=32, batch_size=8,
                          num_workers=0, shuffle=False, caption_encoder=encoder)
    dm.setup("fit")
    assert _keys(dm.train_dataloader()) == [f"0/{i}" for i in range(64)]
    cached = [f for _, _, files in os.walk(cache / "streams") for f in files if f.endswith(".bin")]
    assert cached  # chunks were fetched into data.cache_dir, not read in place


def test_long_captions_are_cut_and_counted(data_dir) -> None:
    short = CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), max_len=8)
    dm = _dm(data_dir, short, shuffle=False)
    batches = list(dm.train_dataloader())
    full = CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), max_len=512)
    expected = sum(len(full.encode(c)[0]) > 8 for b in batches for c in b.captions)
    assert expected > 0 and sum(b.num_truncated for b in batches) == expected
    assert all(b.input_ids.shape[1] <= 8 for b in batches)


def test_unknown_caption_tokens_are_counted_per_batch(tmp_path) -> None:
    """Batch.num_unknown holds the caption tokens the tokenizer mapped to its unknown token (fixed and packed
    batches); a byte-level BPE counts none. setup("validate"): fit would refuse this vocabulary outright."""
    from helpers import write_real_corpus

    from genlip_lit.data.packing import PackingCollator

    real = write_real_corpus(tmp_path / "real", num_train=4, num_val=8)
    compact = CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), max_len=32)
    counted = {}
    for name, encoder in (("compact", compact), ("full", CaptionEncoder(OpenCLIPTokenizer(), max_len=32))):
        dm = GenLIPDataModule(data_dir=real, image_size=16, batch_size=4, num_workers=0, shuffle=False,
                              caption_encoder=encoder)
        dm.setup("validate")
        batches = list(dm.val_dataloader())
        captions = [c for b in batches for c in b.captions]
        unk = encoder.tokenizer.unk_id
        counted[name] = (sum(b.num_unknown for b in batches),
                         sum(encoder.tokenizer.encode(c).count(unk) for c in captions) if unk is not None else 0)
        samples = [dm.val_dataset[i] for i in range(3)]
        packed = PackingCollator(encoder, patch_size=8, num_registers=0, max_tokens=128)([*samples, None])
        assert packed.num_unknown == sum(s["unknown"] for s in samples) and packed.num_skipped == 1
    assert counted["compact"][0] == counted["compact"][1] > 8 and counted["full"] == (0, 0)


# ---------------------------------------------------------------------------------------------- stage 2
NATIVE_SCENE = SceneConfig(image_size=32, max_image_size=64, patch_size=8, word_prob=1.0, word_font_px=8)


@pytest.fixture(scope="module")
def native_dir(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("dm") / "native")
    optimize_synthetic(out, num_train=48, num_val=16, seed=0, scene=NATIVE_SCENE)
    return out


def _native(native_dir: str, encoder: CaptionEncoder, **kw) -> GenLIPDataModule:
    kw = {"resolution": "native", "patch_size": 8, "max_tokens": 160, "min_patches": 4, "max_patches": 64, **kw}
    return _dm(native_dir, encoder, **kw)


def test_native_batches_are_packed_at_native_size(native_dir, encoder) -> None:
    dm = _native(native_dir, encoder, shuffle=False)
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 48
    sizes = set()
    for b in batches:
        assert b.is_packed and b.pixel_values.dtype == torch.uint8 and b.pixel_values.shape[1:] == (3, 8, 8)
        assert b.segment_ids.shape[1] <= 160 and int(b.segment_ids.max()) == len(b)
        sizes |= {tuple(g) for g in b.image_grids.tolist()}
        normalized = b.normalized()
        assert normalized.pixel_values.dtype == torch.float32 and normalized.is_packed
    # the scenes keep their stored size (4..8 patches a side, within min/max patches): several shapes occur
    assert len(sizes) > 3 and all(4 <= h <= 8 and 4 <= w <= 8 for h, w in sizes)
    # the embedded stage-2 data packs tightly: (non-padding tokens) / (row slots), far above padding each sample
    from genlip_lit.data.packing import packing_stats

    stats = [packing_stats(b.segment_ids) for b in batches]
    useful, total = sum(s.useful for s in stats), sum(s.total for s in stats)
    unpacked = sum(s.unpacked_total for s in stats)
    assert useful / total > 0.9 and useful / total > useful / unpacked


def test_native_eval_dataset_is_fixed_size_and_unpacked(native_dir, encoder) -> None:
    dm = _native(native_dir, encoder, image_size=32)
    dataset = dm.eval_dataset("val")
    loader = dm._loader(dataset, 8)
    batch = next(iter(loader))
    assert not batch.is_packed and batch.pixel_values.shape == (8, 3, 32, 32)
    assert batch.patch_shape is None  # the maps describe the stored (larger) scene, not the resized image
    assert all("the word" in c for c in batch.captions)


def test_native_packing_is_deterministic_and_resumes(native_dir, encoder) -> None:
    def keys(loader):
        out = [tuple(b.keys) for b in loader]
        assert out and all(len(k) == 8 for k in out)  # keys present: the comparison below means something
        return out

    full = keys(_native(native_dir, encoder, seed=3).train_dataloader())
    again = keys(_native(native_dir, encoder, seed=3).train_dataloader())
    assert full == again
    loader = _native(native_dir, encoder, seed=3).train_dataloader()
    it = iter(loader)
    seen = [tuple(next(it).keys) for _ in range(2)]
    state = loader.state_dict()
    resumed = _native(native_dir, encoder, seed=3).train_dataloader()
    resumed.load_state_dict(state)
    assert seen + keys(resumed) == full


def test_native_needs_room_for_the_longest_sample(native_dir, encoder) -> None:
    with pytest.raises(GenLIPUserError, match="max_tokens=100 cannot hold"):
        _native(native_dir, encoder, max_tokens=100)
    dm = GenLIPDataModule(data_dir=native_dir, caption_encoder=encoder, resolution="native", num_workers=0)
    with pytest.raises(GenLIPUserError, match="patch size"):
        dm.setup("fit")
    with pytest.raises(GenLIPUserError, match="resolution"):
        GenLIPDataModule(data_dir=native_dir, resolution="square")
