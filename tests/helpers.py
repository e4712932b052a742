"""Shared test helpers: tiny objective modules and checkpoints (the builders every test file uses instead of its own),
a tiny-config builder for in-process `genlip fit` runs, a recording callback, the toy objective of the "add an
objective" promise. The session-wide fixtures built from these live in tests/conftest.py."""

from __future__ import annotations

import os

import lightning as L
import torch

# the repository and this folder, for test files at any depth of tests/ (they mirror the package's folders)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")

RECORDS: list[dict] = []


class Recorder(L.Callback):
    """Records global step and learning rate at the start of fit and after every optimizer step."""

    def on_train_start(self, trainer, pl_module):
        RECORDS.append({"event": "start", "step": trainer.global_step, "lr": _lr(trainer)})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        RECORDS.append({"event": "step", "step": trainer.global_step, "lr": _lr(trainer)})


def _lr(trainer) -> float:
    return trainer.optimizers[0].param_groups[0]["lr"]


def tiny_fit_args(tmp_path, max_steps: int = 4, extra: list[str] | None = None) -> list[str]:
    """`genlip fit` arguments: quickstart config shrunk to seconds (32 px scenes, a 2-block model)."""
    return [
        "fit",
        "--config",
        "experiments/quickstart.yaml",
        f"--trainer.max_steps={max_steps}",
        "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.save_dir={tmp_path}/runs",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.callbacks=[]",  # the quickstart's evaluation callbacks: tests add the ones they check
        "--checkpoint.every_n_train_steps=2",
        "--model.init_args.arch_overrides={depth: 2, width: 64, ffn_hidden: 128}",
        "--data.init_args.synthetic={num_train: 128, num_val: 32, image_size: 32, word_prob: 0.5}",
        f"--data.init_args.cache_dir={tmp_path}/cache",
        "--data.init_args.image_size=32",
        "--data.init_args.batch_size=16",
        "--data.init_args.num_workers=0",
        "--threads=0",  # the caller's thread count, fixed: `auto` could pick another between two compared runs
        *(extra or []),
    ]


# ---------------------------------------------------------------------------------------------- tiny modules
# The model `tiny_fit_args` trains (the quickstart shrunk to 2 blocks of width 64): the builders' default size. A
# test that pinned other sizes passes them, so the figures it asserts stay what they were.
TINY_ARCH = {"depth": 2, "width": 64, "ffn_hidden": 128}
# genlip_lit's objectives by the names the compare overlays use (experiments/compare/): class, arguments picking it
OBJECTIVES = {
    "genlip": ("GenLIPModule", {}),
    "clip": ("ContrastiveModule", {"loss": "clip"}),
    "siglip": ("ContrastiveModule", {"loss": "siglip"}),
    "captioner": ("CaptionerModule", {}),
}


def tiny_genlip(**config):
    """A plain-torch GenLIP on the preset "tiny" with `config` overrides, seeded with 0 first, in eval mode."""
    from genlip_lit.models import GenLIP, GenLIPConfig

    torch.manual_seed(0)
    return GenLIP(GenLIPConfig.from_name("tiny", **config)).eval()


def compact_tokenizer():
    """The compact vocabulary of the synthetic scenes: what `genlip fit` on the quickstart tokenizes with."""
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer

    return OpenCLIPTokenizer(compact_corpus="synthetic")


def tiny_objective(objective: str | type = "genlip", arch_overrides: dict | None = None, seed: int | None = None,
                   tokenizer=None, **kwargs):
    """A tiny objective on the preset "tiny": `objective` is a name of OBJECTIVES or an objective class;
    `arch_overrides` replaces TINY_ARCH whole; the tokenizer is `compact_tokenizer()` unless given; with `seed`,
    torch is seeded first (the same weights in every run). `kwargs` go to the class (lr, max_text_len, ...)."""
    import genlip_lit.modules as modules

    if isinstance(objective, str):
        cls_name, choice = OBJECTIVES[objective]
        cls, kwargs = getattr(modules, cls_name), {**choice, **kwargs}
    else:
        cls = objective
    if seed is not None:
        torch.manual_seed(seed)
    overrides = dict(TINY_ARCH if arch_overrides is None else arch_overrides)
    return cls(arch="tiny", arch_overrides=overrides, tokenizer=tokenizer or compact_tokenizer(), **kwargs)


def write_checkpoint(module, path, **entries) -> str:
    """`module` written as `genlip fit` writes a checkpoint (Lightning's own save: the module's self-description,
    hyper-parameters, loop state), without training; `entries` are then set at its top level (global_step=7,
    datamodule_hyper_parameters={...}). Parent folders are made; returns the path as a string."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, max_steps=0)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(str(path))
    if entries:
        ckpt = torch.load(str(path), weights_only=True)
        ckpt.update(entries)
        torch.save(ckpt, str(path))
    return str(path)


def last_checkpoint(root) -> str:
    """The one last.ckpt of the runs under `root` (a `genlip fit` run's save_dir, or any folder above it)."""
    import glob

    (last,) = glob.glob(f"{root}/**/checkpoints/last.ckpt", recursive=True)
    return last


# ---------------------------------------------------------------------------------------------- a new objective
# What the README's "add an objective" paragraph promises, as a test: this module file and one overlay YAML are all
# a new objective needs (tests/modules/test_base.py trains, exports and reloads it). It learns each image's mean colour.
from torch import nn  # noqa: E402

from genlip_lit.checkpoints.registry import register  # noqa: E402
from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer, Tokenizer  # noqa: E402
from genlip_lit.models import GenLIPConfig  # noqa: E402
from genlip_lit.models.transformer import image_tower  # noqa: E402
from genlip_lit.modules.base import EncoderModule  # noqa: E402


class ColourNet(nn.Module):
    """GenLIP's image tower + a linear head; it names its own training metadata."""

    def __init__(self, config: GenLIPConfig) -> None:
        super().__init__()
        self.tower = image_tower(config)
        self.head = nn.Linear(config.width, 3)

    def no_weight_decay(self) -> set[str]:
        return {f"tower.{n}" for n in self.tower.no_weight_decay()}

    def vision_tower(self) -> nn.Module:
        return self.tower

    def shard_units(self) -> list[nn.Module]:
        return self.tower.shard_units()


@register  # checkpoints naming it may be loaded (genlip_lit/checkpoints/registry.py: nothing a file names is imported)
class ColourObjective(EncoderModule):
    """Predict the mean colour of the image from the mean patch feature (a toy; lr, init_from... from the base)."""

    def __init__(self, arch: str = "tiny", arch_overrides: dict | None = None, tokenizer: Tokenizer | None = None,
                 max_text_len: int = 48, **kwargs) -> None:
        super().__init__(**kwargs)
        # the data still tokenizes captions, so the objective names its text format (saved with checkpoints)
        self.tokenizer = tokenizer or OpenCLIPTokenizer(compact_corpus="synthetic")
        self.caption_encoder = CaptionEncoder(self.tokenizer, None, max_text_len)
        self.config = GenLIPConfig.from_name(arch, **(arch_overrides or {}))
        self.model = ColourNet(self.config)

    def optimized_model(self) -> nn.Module:
        return self.model

    def encode_patches(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model.tower.encode_image(pixel_values)

    def num_vision_params(self) -> int:
        return sum(p.numel() for p in self.model.tower.parameters())

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        batch = batch.normalized()
        guess = self.model.head(self.encode_patches(batch.pixel_values).mean(1))
        loss = nn.functional.mse_loss(guess, batch.pixel_values.mean((2, 3)))
        self.log("train/loss", loss, batch_size=len(batch))
        return loss


# ---------------------------------------------------------------------------------------------- a real-caption corpus
# Captions in words the embedded scenes never use: what a compact `synthetic` vocabulary turns into <unk>.
REAL_CAPTIONS = (
    "a black dog runs on a sandy beach.",
    "two people ride bicycles past a bakery.",
    "a cup of coffee beside an open laptop.",
    "a red kite flies over green hills.",
)


def real_caption_sample(index: int) -> dict:
    """One stored sample (16 px noise PNG, a real caption, a label), as `genlip optimize` writes them."""
    import numpy as np
    from PIL import Image

    from genlip_lit.data.shards import encode_png

    pixels = np.random.default_rng(index).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    return {"image": encode_png(Image.fromarray(pixels)), "caption": REAL_CAPTIONS[index % len(REAL_CAPTIONS)],
            "key": f"real/{index}", "label": index % 2}


def write_real_corpus(root, num_train: int = 12, num_val: int = 4) -> str:
    """train/ and val/ litdata shards of `real_caption_sample`s under `root` (the project's shard writer)."""
    from genlip_lit.data.shards import write_shards

    for split, n in (("train", num_train), ("val", num_val)):
        write_shards(real_caption_sample, n, str(root / split))
    return str(root)


# ---------------------------------------------------------------------------------------------- a kill -9 mid-run
class KillAtStep(L.Callback):
    """SIGKILL this process when training reaches `step` (before that step's checkpoint: Lightning runs the
    checkpoint callback last), as an out-of-memory kill or a preempted node would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step >= self.step:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)


def one_line_refusal(argv: list[str], capsys) -> str:
    """Run `genlip ARGV` in-process; assert exit 2 with exactly one `genlip: error:` line on stderr and return it."""
    import pytest

    from genlip_lit.cli import main

    capsys.readouterr()  # what earlier commands printed
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    lines = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("genlip: error: "), lines
    return lines[0]
