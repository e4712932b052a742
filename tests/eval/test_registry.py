"""The registry of evaluations (eval/registry.py): a new evaluation is one file (tests/eval/toy_evaluation.py) and
runs as a training callback, in `genlip eval` and as a column of `genlip compare`'s table; every registered
evaluation keeps its contract on every registered objective; options come from the function's signature."""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import pytest
import torch
from helpers import REPO, ColourObjective, tiny_fit_args

from genlip_lit.checkpoints import registry as classes
from genlip_lit.cli import main
from genlip_lit.eval import evaluations
from genlip_lit.eval.registry import arg_help, unregister


@pytest.fixture(autouse=True, scope="module")
def toy():
    """Register the toy (importing tests/eval/toy_evaluation.py is all it takes) for this module's tests only:
    the other test modules see the built-in evaluations (e.g. compare's table without a toy column)."""
    import importlib
    import sys

    module = sys.modules.get("toy_evaluation")
    module = importlib.reload(module) if module else importlib.import_module("toy_evaluation")
    yield module
    unregister("brightness")


# ---------------------------------------------------------------------------------------------- the toy, end to end
@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toyfit")
    os.chdir(REPO)
    assert main(tiny_fit_args(tmp, max_steps=2, extra=[
        "--trainer.callbacks+=genlip_lit.callbacks.Evaluate", "--trainer.callbacks.evaluation=brightness",
        "--trainer.callbacks.options={budget: 8, scale: 2.0}"])) == 0
    (log_dir,) = glob.glob(f"{tmp}/runs/quickstart/version_*")
    return tmp, Path(log_dir)


@pytest.mark.slow
def test_a_toy_evaluation_runs_in_fit_in_genlip_eval_and_in_the_comparison_table(toy_run, capsys) -> None:
    from genlip_lit.studies.compare_report import collect_result, curve_panels, read_scalars, table_rows

    tmp, log_dir = toy_run
    logged = {tag: series[-1] for tag, series in read_scalars(log_dir).items()}
    step, pixel_mean = logged["brightness/pixel_mean"]
    assert step == 2 and "brightness/feature_norm" in logged and "brightness/seconds" in logged

    # genlip eval on the last checkpoint, by name with its own options: the same images (the first 8 val
    # samples) give the same pixel mean, the same (final) weights the same feature norm
    out = tmp / "eval"
    assert main(["eval", "--ckpt", str(log_dir / "checkpoints" / "last.ckpt"), "--evaluations",
                 "[{evaluation: brightness, budget: 8, scale: 2.0}]", "--output", str(out), "--device", "cpu"]) == 0
    entry = json.loads((out / "report.json").read_text())["evaluations"]["brightness"]
    assert entry["scalars"]["brightness/pixel_mean"] == pytest.approx(pixel_mean, rel=1e-5)
    assert entry["scalars"]["brightness/feature_norm"] == pytest.approx(logged["brightness/feature_norm"][1],
                                                                        rel=1e-4)
    assert "brightness: brightness/pixel_mean=" in capsys.readouterr().out

    # genlip compare's table has the toy's columns, filled from the run's own logs
    result = {**collect_result("toy", "experiments/quickstart.yaml", log_dir), "status": "finished", "wall_s": 1.0}
    header, shown, raw = table_rows([result])
    column = header.index("mean pixel")
    assert header[column + 1] == "feature norm" and "linear probe top-1" in header  # beside the built-in ones
    assert shown[0][column] == f"{pixel_mean:.2f}" and raw[0][column] == pytest.approx(pixel_mean)
    assert ("brightness/pixel_mean", "mean pixel") in curve_panels()


def test_genlip_eval_refuses_unknown_names_and_options_in_one_line(capsys) -> None:
    from helpers import one_line_refusal

    err = one_line_refusal(["eval", "--ckpt", "c", "--evaluations", "[brightnes]"], capsys)
    assert "no evaluation named 'brightnes' (did you mean 'brightness'?)" in err
    err = one_line_refusal(["eval", "--ckpt", "c", "--evaluations", "[{evaluation: brightness, scael: 2}]"], capsys)
    assert "evaluations[0] (brightness): unknown option 'scael' (did you mean 'scale'?)" in err


# ---------------------------------------------------------------------------------------------- options from code
def test_options_defaults_and_help_come_from_the_function() -> None:
    import inspect

    from genlip_lit.callbacks import Evaluate, LinearProbe, TransferProbe

    probe = evaluations.get("probe")
    assert list(probe.options) == ["budget", "test_budget", "batch_size", "image_folder", "attentive_epochs",
                                   "baselines", "seed"]  # cached_baselines is carried, not an option
    assert probe.options["budget"].default == 2000 and "train split" in probe.options["budget"].help
    signature = inspect.signature(LinearProbe)
    assert [p for p in signature.parameters][:2] == ["every_n_steps", "at_fit_end"]
    assert {k: p.default for k, p in signature.parameters.items() if k in probe.options} == probe.defaults
    assert "attentive" in LinearProbe.__doc__.split("\n\n")[0]  # the name says linear, the doc says both
    assert "CIDEr-D" in evaluations.get("captions").summary
    # a scheduled instance reads its options; a checkpoint key that earlier runs saved is unchanged
    assert LinearProbe(every_n_steps=2, budget=32).state_key == (
        "LinearProbe{'every_n_steps': 2, 'budget': 32, 'image_folder': None}")
    assert TransferProbe(folds=2).name == "transfer_digits"
    toy = Evaluate("brightness", options={"scale": 3.0})
    assert toy.name == "brightness" and toy.scale == 3.0 and toy.budget == 8
    assert toy.state_key == "Evaluate{'evaluation': 'brightness', 'every_n_steps': 0, 'budget': 8}"
    assert arg_help("""Sum.

        Args:
            a: the first
                and more
            b (int): the second
        """) == {"a": "the first and more", "b": "the second"}


def test_a_registration_must_document_and_default_its_options() -> None:
    from genlip_lit.eval.registry import evaluation

    def undocumented(module, view, *, budget: int = 1):
        """No Args section."""

    with pytest.raises(ValueError, match="document option 'budget'"):
        evaluation("undocumented")(undocumented)
    with pytest.raises(ValueError, match="lower-case"):
        evaluation("Bad-Name")
    assert "undocumented" not in [e.name for e in evaluations.registered()]


# ---------------------------------------------------------------------------------------------- the contract
TINY = {"depth": 1, "width": 32, "num_heads": 2, "ffn_hidden": 64, "num_registers": 1}
# small enough for seconds on 2 cores; options not named keep the evaluation's defaults (the toy's are small)
FAST = {
    "probe": {"budget": 16, "test_budget": 8, "batch_size": 16, "attentive_epochs": 1},
    "transfer": {"folds": 2, "batch_size": 32},
    "readout": {"budget": 8, "batch_size": 8, "grid_images": 2},
    "zero_shot": {"budget": 8, "batch_size": 8},
    "captions": {"budget": 4, "batch_size": 4, "max_new_tokens": 3, "show": 2},
    "sink": {"budget": 4, "batch_size": 4},
}


def _objectives() -> dict[str, type]:
    """Every registered objective class once (aliases resolve to the same class), the toy ColourObjective too."""
    found = {}
    for path in classes.known("module"):
        cls = classes.resolve("module", path, "test")
        found.setdefault(cls.__name__, cls)
    assert "ColourObjective" in found and ColourObjective  # registered by tests/helpers.py
    return dict(sorted(found.items()))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, one_torch_thread):
    """(module, view) per objective: a tiny, seeded instance on the embedded scenes at 32 px."""
    from genlip_lit.data.datamodule import GenLIPDataModule
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.eval import real_images
    from genlip_lit.eval.data import DataModuleView

    full = real_images.load_real_set("digits")  # 40 of the 1,797 digits: the same code path, seconds not minutes
    subset = real_images.RealSet(full.images[:40], full.labels[:40], full.class_names, full.origin)
    saved = real_images.REAL_SETS["digits"]
    real_images.REAL_SETS["digits"] = lambda: subset
    cache = tmp_path_factory.mktemp("contract")
    built = {}
    for name, cls in _objectives().items():
        torch.manual_seed(0)
        module = cls(arch="tiny", arch_overrides=TINY, max_text_len=24,
                     tokenizer=OpenCLIPTokenizer(compact_corpus="synthetic")).eval()
        dm = GenLIPDataModule(synthetic={"num_train": 32, "num_val": 16, "image_size": 32}, image_size=32,
                              batch_size=16, num_workers=0, cache_dir=str(cache / name))
        dm.connect(**module.data_settings())
        dm.prepare_data()
        dm.setup("validate")
        built[name] = (module, DataModuleView(dm, "cpu"))
    yield built
    real_images.REAL_SETS["digits"] = saved


EVALUATIONS = [*(e.name for e in evaluations.registered()), "brightness"]  # the built-in ones and the toy


@pytest.mark.slow  # ~15 s in all on a busy 2-core machine: the probes' L-BFGS fits on 4 objectives dominate
@pytest.mark.parametrize("evaluation", EVALUATIONS)
def test_every_evaluation_keeps_its_contract_on_every_objective(evaluation, tiny) -> None:
    from genlip_lit.callbacks import Evaluate
    from genlip_lit.eval.result import EvalResult

    callback = Evaluate(evaluation, options=FAST.get(evaluation))
    ran = []
    for objective, (module, view) in tiny.items():
        result = callback.evaluate(module, view)  # what genlip eval does: the callback's data, options, baselines
        assert isinstance(result, EvalResult)
        reason = result.details.get("skipped")
        if reason is not None:  # does not apply (no text tower, no attention maps): says why, names the class
            assert objective in reason or "does not" in reason or "no " in reason, (objective, reason)
            assert objective not in ("GenLIPModule",), f"{evaluation} skipped the full objective: {reason}"
            continue
        missing = [t for t in callback.spec.tags(callback.options) if t not in result.scalars]
        assert not missing, (objective, missing)
        assert isinstance(result.details.get("num_images"), int) and result.details["num_images"] > 0, objective
        ran.append(objective)
        callback._baseline_rows = None  # baseline rows are per encoder: the next objective computes its own
    assert "GenLIPModule" in ran and len(ran) >= 2, ran
