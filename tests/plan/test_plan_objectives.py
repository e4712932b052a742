"""`genlip plan` for any registered objective, with every default read from the classes' own signatures.

The toy objective of tests/helpers.py (`ColourObjective`, registered there and nowhere else) is planned by the
command, and its planned FLOPs equal a real CPU step's; a default changed in a class's signature changes the
read config and the plan (there is no second copy of it).
"""

from __future__ import annotations

import inspect

import pytest
import torch
import yaml
from helpers import ColourObjective

from genlip_lit.checkpoints.registry import class_path
from genlip_lit.cli import main
from genlip_lit.data.batch import Batch
from genlip_lit.perf.counting import flop_counter
from genlip_lit.plan import PlanRequest, make_plan, read_run_config
from genlip_lit.plan.objective import meta_objective

TINY = {"depth": 2, "width": 64, "ffn_hidden": 128}
COMPACT = {"class_path": "genlip_lit.data.tokenizer.OpenCLIPTokenizer", "init_args": {"compact_corpus": "synthetic"}}


def write_config(tmp_path, model_class: str, model_args: dict, data_args: dict | None = None) -> str:
    path = tmp_path / "fit.yaml"
    path.write_text(yaml.safe_dump({
        "model": {"class_path": model_class, "init_args": model_args},
        "data": {"class_path": "genlip_lit.data.GenLIPDataModule", "init_args": data_args or {}},
        "trainer": {"devices": 1},
    }))
    return str(path)


@pytest.mark.filterwarnings("ignore:You are trying to `self.log")  # the real step below runs without a trainer
def test_a_registered_plugin_objective_is_planned_by_the_command(tmp_path, capsys) -> None:
    config = write_config(tmp_path, class_path(ColourObjective), {"arch_overrides": TINY},
                          {"image_size": 32, "batch_size": 4})
    argv = ["--config", config, "--gpu", "custom", "--peak-tflops", "100", "--memory-gib", "8", "--samples", "1e6"]
    assert main(["plan", *argv]) == 0
    text = capsys.readouterr().out
    assert "model     ColourObjective tiny: 2 blocks x 64" in text and "largest micro-batch that fits: 4" in text

    # the planned FLOPs are those of the objective's own training step, counted on a real CPU batch
    plan = make_plan(PlanRequest(read_run_config([config]), plan_gpu(), 1, 1e6, 0.4))  # the command's, cached
    torch.manual_seed(0)
    module = ColourObjective(arch_overrides=TINY)
    module.model.tower.set_attn_impl("sdpa")
    text_len = module.caption_encoder.max_len
    batch = Batch(torch.randn(2, 3, 32, 32), torch.zeros(2, text_len, dtype=torch.long),
                  torch.ones(2, text_len, dtype=torch.bool), torch.ones(2, text_len, dtype=torch.bool))
    with flop_counter() as counter:
        module.training_step(batch, 0).backward()
    assert plan.counted_flops[False] == counter.get_total_flops() / 2
    assert plan.params == sum(p.numel() for p in module.model.parameters())
    assert plan.shape.text_tokens == text_len == inspect.signature(ColourObjective.__init__).parameters["max_text_len"].default


def plan_gpu():
    from genlip_lit.commands.plan import resolve_gpu

    return resolve_gpu("custom", 100, 8)


def with_default(monkeypatch, function, name: str, value) -> None:
    """Change the default of `function`'s argument `name` where Python keeps it (positional or keyword-only)."""
    function = inspect.unwrap(function)  # Trainer.__init__ is decorated; the signature follows __wrapped__
    params = [p for p in inspect.signature(function).parameters.values() if p.default is not p.empty]
    if params[[p.name for p in params].index(name)].kind is inspect.Parameter.KEYWORD_ONLY:
        monkeypatch.setitem(function.__kwdefaults__, name, value)
    else:
        positional = [p.name for p in params if p.kind is not inspect.Parameter.KEYWORD_ONLY]
        defaults = list(function.__defaults__)
        defaults[positional.index(name)] = value
        monkeypatch.setattr(function, "__defaults__", tuple(defaults))


def test_defaults_are_the_classes_own(tmp_path, monkeypatch) -> None:
    from lightning.pytorch import Trainer

    from genlip_lit.data.datamodule import GenLIPDataModule
    from genlip_lit.modules import GenLIPModule
    from genlip_lit.modules.base import EncoderModule

    config = write_config(tmp_path, "genlip_lit.modules.GenLIPModule", {"arch_overrides": TINY, "tokenizer": COMPACT})
    before = read_run_config([config])
    data_defaults = inspect.signature(GenLIPDataModule.__init__).parameters
    assert before.image_size == data_defaults["image_size"].default
    assert before.model["max_text_len"] == inspect.signature(GenLIPModule.__init__).parameters["max_text_len"].default
    assert before.model["lr"] == inspect.signature(EncoderModule.__init__).parameters["lr"].default  # EncoderModule's, through **kwargs
    assert before.accumulate == inspect.signature(Trainer.__init__).parameters["accumulate_grad_batches"].default

    with_default(monkeypatch, GenLIPDataModule.__init__, "image_size", 96)
    with_default(monkeypatch, GenLIPModule.__init__, "max_text_len", 40)
    with_default(monkeypatch, Trainer.__init__, "accumulate_grad_batches", 3)
    after = read_run_config([config])
    assert (after.image_size, after.model["max_text_len"], after.accumulate) == (96, 40, 3)
    objective = meta_objective(after)
    assert objective.max_text_len == 40 and objective.module.caption_encoder.max_len == 40
    plan = make_plan(PlanRequest(after, plan_gpu(), 1, 1e6, 0.4))
    side = 96 // objective.config.patch_size
    assert plan.shape.grid == (side, side) and plan.shape.text_tokens == 40
    assert plan.global_batch == after.batch_size * 3


def test_arguments_the_objective_does_not_take_are_refused(tmp_path) -> None:
    from genlip_lit.errors import GenLIPUserError

    config = write_config(tmp_path, class_path(ColourObjective), {"prompt": "x"})
    with pytest.raises(GenLIPUserError, match="ColourObjective takes no argument 'prompt'"):
        read_run_config([config])


@pytest.mark.parametrize("objective", ["genlip_lit.modules.ContrastiveModule", "genlip_lit.modules.CaptionerModule"])
def test_native_resolution_is_refused_for_objectives_that_train_on_fixed_batches(objective, tmp_path) -> None:
    """As `genlip fit` refuses it (test_fit.py): plan says the same line rather than pricing a run that cannot
    start."""
    from genlip_lit.errors import GenLIPUserError

    config = write_config(tmp_path, objective, {"arch_overrides": TINY}, {"resolution": "native"})
    with pytest.raises(GenLIPUserError, match="trains on fixed-resolution batches: use data.resolution: fixed"):
        read_run_config([config])
    assert read_run_config([write_config(tmp_path, "genlip_lit.modules.GenLIPModule", {"arch_overrides": TINY},
                                         {"resolution": "native"})]).resolution == "native"
