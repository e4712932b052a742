"""modules/base.py's one training-step bookkeeping path: every objective counts undecodable samples, cut captions and
unknown caption tokens the same way, and a run killed with SIGKILL and resumed with `ckpt_path` ends with the totals
of the run that never stopped (at 74076bd CLIP and SigLIP restarted their totals from 0: 24 vs 12 skipped)."""

from __future__ import annotations

import functools
import os
import signal
import sys
import traceback

import lightning as L
import pytest
import torch
from helpers import OBJECTIVES, tiny_objective

from genlip_lit.callbacks import ResumableCheckpoint
from genlip_lit.data.datamodule import GenLIPDataModule
from genlip_lit.data.shards import synthetic_sample, write_shards
from genlip_lit.data.synthetic import SceneConfig
from genlip_lit.data.tokenizer import HFTokenizer
from genlip_lit.modules.base import DATA_COUNTERS, packing_sums

TINY = {"depth": 1, "width": 32, "ffn_hidden": 64, "patch_size": 8}
UNDECODABLE = (2, 9, 13)  # of 20 train samples: one batch in five holds one
UNKNOWN_WORD = "zebra"  # outside the tokenizer's vocabulary: every caption holding it adds an unknown token
# one text or decoder layer: each objective's run stays at seconds (helpers.OBJECTIVES names the objectives)
ONE_LAYER = {"captioner": {"decoder_layers": 1}, "clip": {"text_layers": 1}, "siglip": {"text_layers": 1}}


def _sample(index: int, damaged: bool) -> dict:
    sample = synthetic_sample(index, 5, SceneConfig(image_size=16, patch_size=8))
    if damaged and index in UNDECODABLE:
        sample["image"] = b"\x89PNG truncated, not an image"
    if index % 3 == 0:
        sample["caption"] = f"{UNKNOWN_WORD} {sample['caption']}"
    return sample


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[str, str]:
    """(data_dir with undecodable images and captions the tokenizer cannot fully spell, a WordLevel tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    root = tmp_path_factory.mktemp("damaged")
    for split, n in (("train", 20), ("val", 4)):
        write_shards(functools.partial(_sample, damaged=split == "train"), n, str(root / split))
    captions = [synthetic_sample(i, 5, SceneConfig(image_size=16, patch_size=8))["caption"] for i in range(40)]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(captions, trainers.WordLevelTrainer(special_tokens=["<pad>", "<s>", "</s>", "[UNK]"]))
    tok.save(str(root / "tokenizer.json"))
    return str(root), str(root / "tokenizer.json")


class KillAt(L.Callback):
    """SIGKILL this process when step `step` starts: no hook, no `finally`, no checkpoint at the end runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def _fit(objective: str, corpus: tuple[str, str], ckdir: str, ckpt_path: str | None = None,
         kill_at: int | None = None) -> L.LightningModule:
    data_dir, tokenizer = corpus
    torch.manual_seed(0)
    module = tiny_objective(objective, TINY, tokenizer=HFTokenizer(tokenizer), max_text_len=10,
                            **ONE_LAYER.get(objective, {}))
    data = GenLIPDataModule(data_dir=data_dir, cache_dir=ckdir + "_cache", image_size=16, batch_size=4,
                            num_workers=0)
    data.connect(**module.data_settings())
    callbacks = [ResumableCheckpoint(dirpath=ckdir, filename="{step}", save_last=True, every_n_train_steps=3,
                                     save_top_k=-1)]
    if kill_at is not None:
        callbacks.append(KillAt(kill_at))
    trainer = L.Trainer(max_steps=7, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, callbacks=callbacks)
    trainer.fit(module, data, ckpt_path=ckpt_path)
    module.logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("data/")}
    return module


def _killed_run(objective: str, corpus: tuple[str, str], ckdir: str, kill_at: int) -> None:
    """The run in a forked child that SIGKILLs itself mid-run (one CPU thread: safe after fork)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child never returns
        try:
            torch.set_num_threads(1)
            _fit(objective, corpus, ckdir, kill_at=kill_at)
        except BaseException:
            traceback.print_exc()
            sys.stderr.flush()
        os._exit(3)  # reached only if the kill did not happen
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"child ended with status {status}"


@pytest.mark.slow
@pytest.mark.parametrize("objective", list(OBJECTIVES))
def test_killed_and_resumed_run_keeps_every_data_total(objective, corpus, tmp_path) -> None:
    whole = _fit(objective, corpus, str(tmp_path / "whole"))
    totals = whole.step_totals_now()
    # 7 batches of 4 cover the 20 samples once (and 8 again): every undecodable one at least once
    assert totals["skipped_samples"] >= len(UNDECODABLE)
    assert totals["unknown_tokens"] > 0 and totals["truncated_captions"] > 0
    assert whole.logged == {f"data/{k}": float(v) for k, v in totals.items()}
    _killed_run(objective, corpus, str(tmp_path / "killed"), kill_at=5)  # 2 steps after its step-3 checkpoint
    assert sorted(os.listdir(tmp_path / "killed")) == ["last.ckpt", "step=3.ckpt"]
    resumed = _fit(objective, corpus, str(tmp_path / "killed"), ckpt_path=str(tmp_path / "killed" / "step=3.ckpt"))
    assert resumed.step_totals_now() == totals
    assert resumed.logged == whole.logged
    # the final checkpoints (the resumed run's last.ckpt is last-v1.ckpt: Lightning keeps the killed run's)
    ckpts = [torch.load(tmp_path / run / "step=7.ckpt", weights_only=True) for run in ("whole", "killed")]
    for name in DATA_COUNTERS:
        assert ckpts[0][f"genlip_{name}"] == ckpts[1][f"genlip_{name}"] == totals[name], name


def test_packing_sums_equal_the_host_statistics() -> None:
    from genlip_lit.data.packing import packing_stats

    seg = torch.tensor([[1, 1, 1, 2, 0, 0], [3, 3, 3, 3, 3, 0]])
    stats = packing_stats(seg)
    assert packing_sums(seg, 3).tolist() == [stats.useful, stats.total, stats.unpacked_total] == [9, 12, 15]
