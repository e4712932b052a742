"""modules/safety.py: non-finite steps are skipped, counted and stop the run with a finite last.ckpt; training
randomness is part of the checkpoint (bit-identical resume with random crops and drop path); under DDP the
next-token loss is normalised by the global token count, so the gradient equals the one-process gradient."""

from __future__ import annotations

import glob
import io
import os
import random
import re
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
from helpers import REPO, tiny_fit_args, tiny_objective

from genlip_lit.callbacks import NonFiniteGuard, ResumableCheckpoint
from genlip_lit.checkpoints.loading import load_checkpoint
from genlip_lit.cli import main
from genlip_lit.data.datamodule import GenLIPDataModule
from genlip_lit.data.tokenizer import OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule
from genlip_lit.modules.base import EncoderModule
from genlip_lit.modules.safety import capture_rng, restore_rng

TINY = {"depth": 2, "width": 32, "ffn_hidden": 64}


# ---------------------------------------------------------------------------------------------- non-finite steps
def test_lr_1e6_stops_with_one_line_and_a_finite_last_ckpt(tmp_path, capsys) -> None:
    """At 704228a: loss NaN from step 2 to 40, exit 0, every checkpoint all-NaN."""
    os.chdir(REPO)
    args = tiny_fit_args(tmp_path, max_steps=40, extra=["--model.init_args.lr=1e6",
                                                        "--checkpoint.every_n_train_steps=100"])
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "genlip: error" in x]
    found = re.search(r"training stopped at step (\d+): .* for 8 steps in a row \(steps (\d+)-\1", line)
    assert found and "learning rate too high (lr=1000000.0)" in line and "bad data" in line, line
    (last,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    assert last in line
    ckpt = torch.load(last, weights_only=True)
    stop, first = int(found.group(1)), int(found.group(2))
    assert ckpt["global_step"] == stop and ckpt["genlip_nonfinite_steps"] == 8
    # only the finite steps before the run of NaN made an update (AdamW counts per-parameter updates)
    assert {float(s["step"]) for s in ckpt["optimizer_states"][0]["state"].values()} == {first - 1.0}
    module, _ = load_checkpoint(last)  # finite, digest intact: every command can use it
    assert all(torch.isfinite(p).all() for p in module.parameters())


class NaNLossContrastive(ContrastiveModule):
    def compute_loss(self, image_emb, text_emb):
        loss = super().compute_loss(image_emb, text_emb)
        return loss * float("nan") if self.trainer.global_step >= 1 else loss


class NaNLossCaptioner(CaptionerModule):
    def caption_loss(self, batch):
        out = super().caption_loss(batch)
        if self.trainer.global_step >= 1:
            out.loss = out.loss * float("inf")
        return out


class NaNGradGenLIP(GenLIPModule):
    """Finite loss, NaN gradient: caught before the optimizer step too."""

    def on_after_backward(self) -> None:
        if self.trainer.global_step >= 1:
            next(self.parameters()).grad.fill_(float("nan"))


class WeightsAfterStep(L.Callback):
    def __init__(self, step: int) -> None:
        self.step, self.weights = step, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            self.weights = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


@pytest.mark.parametrize(("cls", "fused"), [(NaNLossContrastive, False), (NaNLossCaptioner, False),
                                           (NaNGradGenLIP, False), (NaNGradGenLIP, True)])
def test_every_objective_skips_counts_and_stops(cls, fused, tmp_path, monkeypatch) -> None:
    """fused: AdamW's fused kernel (what CUDA runs), which skips a step on the guard's device-side flag (a NaN
    loss there: test_guard_and_bookkeeping_read_nothing_back_during_steps); otherwise the verdict is read on the
    host."""
    monkeypatch.setattr(EncoderModule, "fused_optimizer", lambda self: fused)
    kwargs = {"loss": "clip", "text_layers": 1} if cls is NaNLossContrastive else {"max_text_len": 32}
    module = tiny_objective(cls, TINY, **kwargs)
    data = GenLIPDataModule(synthetic={"num_train": 64, "num_val": 8, "image_size": 32, "word_prob": 0.5},
                            cache_dir=str(tmp_path / "cache"), image_size=32, batch_size=8, num_workers=0)
    data.connect(**module.data_settings())  # what genlip fit does
    after_first = WeightsAfterStep(1)
    checkpoint = ResumableCheckpoint(dirpath=str(tmp_path / "ck"), save_last=True, every_n_train_steps=100)
    trainer = L.Trainer(max_steps=20, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0,
                        callbacks=[NonFiniteGuard(max_consecutive=3), checkpoint, after_first])
    with pytest.raises(GenLIPUserError, match=r"training stopped at step 4: .* 3 steps in a row \(steps 2-4"):
        trainer.fit(module, data)
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["genlip_nonfinite_steps"] == 3
    for name, value in after_first.weights.items():  # no update since step 1
        assert torch.equal(ckpt["state_dict"][name], value), name
    assert module.nonfinite_steps == 3


# (`numpy()` is left out: on a device tensor it raises, so it never hides a copy; `cpu()` is what would)
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu")
OUR_STEP_CODE = tuple(os.path.join(REPO, "genlip_lit", "modules", f) for f in ("safety.py", "base.py"))


class HostReads:
    """Counts the Tensor methods that read a value back to the host (a sync on a GPU) called while one of
    `OUR_STEP_CODE`'s functions is on the stack (torch or Lightning code called from ours included)."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[str] = []
        self.active = False
        for name in HOST_READS:
            monkeypatch.setattr(torch.Tensor, name, self._counting(name, getattr(torch.Tensor, name)))

    def _counting(self, name, method):
        def counted(tensor, *args, **kwargs):
            if self.active:
                frame = sys._getframe(1)
                while frame is not None:
                    if frame.f_code.co_filename in OUR_STEP_CODE:
                        self.calls.append(f"{name} from {frame.f_code.co_name}:{frame.f_lineno}")
                        break
                    frame = frame.f_back
            return method(tensor, *args, **kwargs)

        return counted


class NaNOnSteps(GenLIPModule):
    """NaN loss at steps 3 and 4 (1-based): skipped and counted, fewer than the stop's run (8)."""

    def caption_loss(self, batch):
        out = super().caption_loss(batch)
        if self.trainer.global_step in (2, 3):
            out.loss = out.loss * float("nan")
        return out


class ReadsDuringSteps(L.Callback):
    """Switches the counting on from the first step's start to the last step's end (setup and teardown may read)."""

    def __init__(self, reads: HostReads) -> None:
        self.reads = reads

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.reads.active = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.reads.active = False


@pytest.mark.slow
def test_guard_and_bookkeeping_read_nothing_back_during_steps(tmp_path, monkeypatch) -> None:
    """With the fused optimizer CUDA uses, the step path of modules/safety.py and base.py (non-finite verdict,
    counters, RNG window, data totals) calls no Tensor method that copies a value to the host; the skipped steps
    still make no update and are counted."""
    monkeypatch.setattr(EncoderModule, "fused_optimizer", lambda self: True)
    module = tiny_objective(NaNOnSteps, TINY, max_text_len=32)
    data = GenLIPDataModule(synthetic={"num_train": 40, "num_val": 8, "image_size": 32, "word_prob": 0.5},
                            cache_dir=str(tmp_path / "cache"), image_size=32, batch_size=8, num_workers=0)
    data.connect(**module.data_settings())
    reads = HostReads(monkeypatch)
    after = [WeightsAfterStep(2), WeightsAfterStep(4)]
    trainer = L.Trainer(max_steps=5, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, callbacks=[ReadsDuringSteps(reads), *after])
    trainer.fit(module, data)
    assert trainer.global_step == 5 and reads.calls == []
    assert module.nonfinite_steps == 2 and float(trainer.callback_metrics["train/nonfinite_steps"]) == 2.0
    for name, value in after[0].weights.items():  # steps 3 and 4 changed nothing
        assert torch.equal(after[1].weights[name], value), name
    steps = {float(s["step"]) for s in trainer.optimizers[0].state_dict()["state"].values()}
    assert steps == {3.0}  # AdamW's own count: the 3 finite steps only
    # the counter sees a read where there is one: it is not blind
    reads.active = True
    module.nonfinite_steps  # noqa: B018 - a host read, by design (checkpoints, reports)
    assert any("nonfinite_steps" in call for call in reads.calls)


def test_nonfinite_guard_settings() -> None:
    with pytest.raises(GenLIPUserError, match="max_consecutive must be an integer >= 0"):
        NonFiniteGuard(-1)
    module = tiny_objective("genlip", TINY)
    assert module.max_nonfinite_steps == 8
    NonFiniteGuard(0).setup(None, module, "fit")
    assert module.max_nonfinite_steps == 0  # skip forever, never stop


# ---------------------------------------------------------------------------------------------- RNG and resume
def test_rng_states_round_trip_through_a_weights_only_file(tmp_path) -> None:
    torch.manual_seed(3), np.random.seed(4), random.seed(5)
    torch.save({"rng": capture_rng()}, tmp_path / "r.pt")
    expected = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random(), np.random.randn())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2:] == expected[2:]


WORDS = ["a red circle", "a blue square", "a green triangle", "a small red square", "a large blue circle"]  # spelt by the compact vocabulary


def _noise_sample(i: int) -> dict:
    from PIL import Image

    pixels = np.random.default_rng(i).integers(0, 256, size=(28, 40, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return {"image": buf.getvalue(), "caption": WORDS[i % len(WORDS)], "key": f"s{i}", "label": i % 5}


@pytest.fixture(scope="module")
def crop_corpus(tmp_path_factory) -> str:
    """40 x 28 images for a 16 px model: every training sample gets a random crop (8 positions)."""
    import litdata

    root = tmp_path_factory.mktemp("crops")
    for split, n in (("train", 40), ("val", 8)):
        litdata.optimize(fn=_noise_sample, inputs=list(range(n)), output_dir=str(root / split), chunk_bytes="64KB",
                         num_workers=1, start_method="fork", verbose=False)
    return str(root)


def _fit(tmp, data_dir: str, num_workers: int, extra: list[str]) -> str:
    args = tiny_fit_args(tmp, max_steps=6, extra=[
        "--checkpoint.every_n_train_steps=3",
        "--model.init_args.arch_overrides={depth: 2, width: 32, ffn_hidden: 64, drop_path: 0.1}",
        f"--data.init_args.data_dir={data_dir}", "--data.init_args.synthetic=null", "--data.init_args.image_size=16",
        "--data.init_args.batch_size=8", "--data.init_args.val_batch_size=8",
        f"--data.init_args.num_workers={num_workers}", *extra])
    assert main(args) == 0
    (last,) = glob.glob(f"{tmp}/runs/*/version_*/checkpoints/last.ckpt")
    return last


@pytest.mark.slow
@pytest.mark.parametrize("num_workers", [0, 1])
def test_resume_is_bit_identical_with_random_crops_and_drop_path(crop_corpus, tmp_path, num_workers) -> None:
    """6 steps (an epoch is 5) with validation every 2, vs the same run resumed from its step-3 checkpoint.
    At 704228a the weights differed (rel. 0.4-0.5% after 6 steps) with 0 and with 2 workers."""
    os.chdir(REPO)
    whole = _fit(tmp_path / "whole", crop_corpus, num_workers, [])
    middle = os.path.join(os.path.dirname(whole), "step=3.ckpt")
    resumed = _fit(tmp_path / "resumed", crop_corpus, num_workers, [f"--ckpt_path={middle}"])
    a, b = (torch.load(p, weights_only=True) for p in (whole, resumed))
    assert a["global_step"] == b["global_step"] == 6
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    assert a["genlip_rng"][0]["torch"].equal(b["genlip_rng"][0]["torch"])


def test_crops_follow_the_sample_not_the_worker_or_the_global_rng(crop_corpus) -> None:
    from genlip_lit.data.tokenizer import CaptionEncoder

    encoder = CaptionEncoder(OpenCLIPTokenizer(compact_corpus="synthetic"), max_len=16)

    def pixels(seed: int) -> torch.Tensor:
        dm = GenLIPDataModule(data_dir=crop_corpus, image_size=16, batch_size=8, num_workers=0, shuffle=False,
                              seed=seed, caption_encoder=encoder)
        dm.setup("fit")
        ds = dm.train_dataset
        ds.set_epoch(1)
        torch.manual_seed(123)  # the global RNG plays no part
        first = torch.stack([ds[i]["pixel_values"] for i in range(8)])
        torch.manual_seed(7)
        again = torch.stack([ds[i]["pixel_values"] for i in range(8)])
        assert torch.equal(first, again)
        return first

    a, b = pixels(0), pixels(1)
    assert not torch.equal(a, b)  # crops do move, with the data seed
    assert len({tuple(x.flatten()[:8].tolist()) for x in a}) == 8


# ---------------------------------------------------------------------------------------------- DDP = one process
@pytest.mark.slow
def test_ddp_gradient_equals_one_process_with_unequal_token_counts(tmp_path) -> None:
    """Rank 0 holds 2 short captions, rank 1 four long ones. At 704228a the gradients differed by 24-91% per
    tensor, and train/loss and the data counters were rank 0's."""
    worker = os.path.join(REPO, "tests", "ddp_global_loss_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in ([sys.executable, worker, "single", str(tmp_path)],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", worker, "ddp",
                 str(tmp_path)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, env=env)
        assert done.returncode == 0, done.stderr[-4000:]
    one, ddp = (torch.load(tmp_path / f"{m}.pt", weights_only=True) for m in ("single", "ddp"))
    assert one["grads"].keys() == ddp["grads"].keys() and len(one["grads"]) > 10
    worst = max(float((one["grads"][k] - ddp["grads"][k]).abs().max()) for k in one["grads"])
    assert worst <= 1e-5, worst
    for key in ("train/loss", "train/token_acc", "data/skipped_samples", "data/truncated_captions",
                "data/unknown_tokens"):
        assert ddp["metrics"][key] == pytest.approx(one["metrics"][key], rel=1e-6, abs=1e-7), key
    assert (ddp["skipped"], ddp["truncated"], ddp["unknown"]) == (one["skipped"], one["truncated"], one["unknown"]) \
        == (3, 5, 9)


def test_checkpoint_tokenizer_must_match_the_model_it_is_loaded_into() -> None:
    module = tiny_objective("genlip", TINY)
    ckpt = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(ckpt)
    module.on_load_checkpoint(dict(ckpt))  # its own checkpoint: fine
    fresh = tiny_objective("genlip", TINY)
    other_class = {**ckpt, "genlip_tokenizer": {**ckpt["genlip_tokenizer"], "class_path": "subprocess.Popen"}}
    with pytest.raises(GenLIPUserError, match="holds a 'subprocess.Popen' tokenizer"):
        fresh.on_load_checkpoint(other_class)
    emptied = {**ckpt, "genlip_tokenizer": {**ckpt["genlip_tokenizer"], "state": {}}}  # edited: full vocabulary
    with pytest.raises(GenLIPUserError, match="49408-token vocabulary, this model has"):
        fresh.on_load_checkpoint(emptied)


def test_a_diverged_run_names_an_existing_last_ckpt_only_when_it_is_finite(tmp_path) -> None:
    """Weights already NaN (e.g. resumed from a bad file): the old last.ckpt is named only after it is checked."""
    from types import SimpleNamespace

    from genlip_lit.checkpoints.integrity import SHA_KEY, weights_sha256

    module = tiny_objective("genlip", TINY)
    finite = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        next(module.parameters()).fill_(float("nan"))
    callback = SimpleNamespace(save_last=True, dirpath=str(tmp_path), CHECKPOINT_NAME_LAST="last",
                               FILE_EXTENSION=".ckpt")
    trainer = SimpleNamespace(checkpoint_callback=callback, is_global_zero=True)
    last = tmp_path / "last.ckpt"
    assert module._save_finite_last(trainer) is None  # none there
    nan_state = module.state_dict()
    torch.save({"state_dict": nan_state, SHA_KEY: weights_sha256(nan_state)}, last)
    assert module._save_finite_last(trainer) is None  # NaN: not "the last finite weights"
    torch.save({"state_dict": finite, SHA_KEY: weights_sha256(nan_state)}, last)
    assert module._save_finite_last(trainer) is None  # edited under a stale digest
    torch.save({"state_dict": finite, SHA_KEY: weights_sha256(finite), "_genlip_weights_verified": True}, last)
    assert module._save_finite_last(trainer) == str(last)
