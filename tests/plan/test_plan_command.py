"""`genlip plan`: reading and composing fit configs, the report's arithmetic, measured MFU from logs, refusals."""

from __future__ import annotations

import csv
import os

import pytest
import yaml

from genlip_lit.cli import main
from genlip_lit.commands.plan import parse, run
from genlip_lit.plan import read_run_config
from genlip_lit.plan.logs import read_throughput_log

SMALL = ["--config", "experiments/quickstart.yaml",
         "--model.init_args.arch_overrides={depth: 2, width: 64, ffn_hidden: 128}",
         "--data.init_args.image_size=32"]
CUSTOM = ["--gpu", "custom", "--peak-tflops", "100", "--memory-gib", "8"]


def refusal(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("genlip: error: ") and "\n" not in err  # one line, no traceback
    return err


def write_yaml(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_configs_compose_like_lightning_cli(tmp_path) -> None:
    base = read_run_config(["experiments/stage1_corpus.yaml"])
    assert (base.arch, base.image_size, base.batch_size, base.precision) == ("b16", 224, 256, "bf16-mixed")
    assert base.world_size is None  # devices: auto
    overlay = write_yaml(tmp_path / "o.yaml", {
        "trainer": {"devices": 4, "num_nodes": 2, "accumulate_grad_batches": 3},
        "data": {"init_args": {"batch_size": 16}},
        "model": {"init_args": {"arch_overrides": {"depth": 6}}},
    })
    run_config = read_run_config(["experiments/stage1_corpus.yaml", "experiments/scale/fsdp2.yaml", overlay],
                                 [("model.init_args.arch", "so16"), ("data.init_args.image_size", "384")])
    assert (run_config.arch, run_config.image_size, run_config.batch_size) == ("so16", 384, 16)
    assert run_config.arch_overrides["depth"] == 6 and run_config.arch_overrides["loss_chunk_tokens"] == 1024
    assert (run_config.world_size, run_config.accumulate) == (8, 3)
    assert run_config.strategy["class_path"].endswith("ModelParallelStrategy")
    # a new class_path replaces the node's init_args instead of merging into them
    swap = write_yaml(tmp_path / "s.yaml", {"trainer": {"strategy": {
        "class_path": "lightning.pytorch.strategies.DDPStrategy", "init_args": {"gradient_as_bucket_view": True}}}})
    run_config = read_run_config(["experiments/stage1_corpus.yaml", "experiments/scale/fsdp2.yaml", swap])
    assert run_config.strategy["init_args"] == {"gradient_as_bucket_view": True}


def test_report_shows_the_arithmetic_of_its_time(capsys) -> None:
    argv = [*SMALL, *CUSTOM, "--gpus", "2", "--global-batch", "32", "--samples", "1e6", "--mfu", "0.25"]
    assert main(["plan", *argv]) == 0
    text = capsys.readouterr().out
    args, overrides = parse(argv)
    from genlip_lit.commands.plan import resolve_gpu
    from genlip_lit.plan import PlanRequest, make_plan

    plan = make_plan(PlanRequest(read_run_config(args.config, overrides), resolve_gpu("custom", 100, 8), 2, 1e6, 0.25,
                                 global_batch=32))
    # time = FLOPs per sample x samples / (GPUs x peak x MFU): 32-true computes at the custom peak
    seconds = plan.counted_flops[plan.best.checkpointing] * 1e6 / (2 * 100e12 * 0.25)
    assert plan.days == pytest.approx(seconds / 86400)
    assert plan.gpu_hours == pytest.approx(seconds * 2 / 3600)
    assert f"{plan.model_flops / 1e9:,.1f} GFLOP per sample" in text
    assert "global 32 = 2 GPUs x 16" in text and "micro-batch 8 x accumulate 2" in text
    assert "largest micro-batch that fits: 16" in text  # a tiny network fits its whole per-GPU batch
    assert "accumulate_grad_batches 1" in text
    assert text == run(args, overrides) + "\n"


def test_throughput_logs_set_the_mfu(tmp_path) -> None:
    csv_dir = tmp_path / "csv_run" / "version_0"
    csv_dir.mkdir(parents=True)
    with open(csv_dir / "metrics.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["step", "perf/mfu", "perf/samples_per_s", "train/loss"])
        for step, mfu in enumerate([0.05, 0.30, 0.32, 0.31, 0.29]):  # the first window (warm-up) is dropped
            writer.writerow([step, mfu, 100 * mfu, ""])
        writer.writerow([9, "", "", 1.0])
    log = read_throughput_log(str(tmp_path / "csv_run"))
    assert log.mfu == pytest.approx(0.305) and log.windows == 5

    from torch.utils.tensorboard import SummaryWriter

    tb_dir = tmp_path / "tb_run"
    writer = SummaryWriter(str(tb_dir))
    for step, rate in enumerate([1.0, 50.0, 60.0, 70.0]):
        writer.add_scalar("perf/samples_per_s", rate, step)
        writer.add_scalar("perf/train_flops_per_sample", 2e11, step)
    writer.close()
    log = read_throughput_log(str(tb_dir))
    assert (log.mfu, log.samples_per_s) == (None, 60.0) and log.flops_per_sample == pytest.approx(2e11)
    # no perf/mfu logged: MFU = samples/s x the logged FLOPs per sample / this GPU's peak
    args, overrides = parse([*SMALL, *CUSTOM, "--gpus", "1", "--samples", "1e6", "--throughput-log", str(tb_dir)])
    text = run(args, overrides)
    assert "time at 12% MFU (perf/samples_per_s 60 x logged 2e+11 FLOP/sample / custom GPU peak" in text


def test_impossible_plans_are_refused_in_one_line(capsys, tmp_path) -> None:
    base = [*SMALL, "--samples", "1e6"]
    err = refusal(capsys, [*base, "--gpu", "custom", "--peak-tflops", "100", "--memory-gib", "3.001", "--gpus", "1"])
    assert "does not fit even at micro-batch 1" in err
    err = refusal(capsys, [*base, *CUSTOM, "--gpus", "3", "--global-batch", "32"])
    assert "global batch 32 is not divisible by 3 GPUs" in err
    err = refusal(capsys, [*base, *CUSTOM, "--gpus", "2", "--global-batch", "12"])
    assert "global batch 12 is not divisible by 2 GPUs x micro-batch 8" in err
    assert "unknown --gpu 'l40s'" in refusal(capsys, [*base, "--gpu", "l40s", "--gpus", "1"])
    assert "--peak-tflops and --memory-gib" in refusal(capsys, [*base, "--gpu", "custom", "--peak-tflops", "5"])
    assert "give --gpus N" in refusal(capsys, ["--config", "experiments/stage1_corpus.yaml", "--samples", "1e6"])
    assert "unrecognised argument 'extra'" in refusal(capsys, [*base, *CUSTOM, "extra"])
    assert "not a registered genlip_lit class" in refusal(capsys, [*base, *CUSTOM, "--model.class_path", "os.Popen"])
    assert "GenLIPModule takes no argument 'depth'" in refusal(capsys, [*base, *CUSTOM, "--model.init_args.depth", "2"])
    assert "does not exist" in refusal(capsys, ["--config", os.path.join(tmp_path, "missing.yaml")])
    assert "no perf/mfu or perf/samples_per_s" in refusal(capsys, [*base, *CUSTOM, "--throughput-log", str(tmp_path)])


def test_prompt_length_without_the_configured_tokenizer(capsys, monkeypatch) -> None:
    from genlip_lit.data import tokenizer as tokenizers
    from genlip_lit.plan.objective import meta_objective

    hf = ["--model.init_args.tokenizer={class_path: genlip_lit.data.tokenizer.HFTokenizer, "
          "init_args: {path: /nowhere/tokenizer.json}}", "--model.init_args.prompt=Describe the image in detail."]
    args, overrides = parse([*SMALL, *hf])
    objective = meta_objective(read_run_config(args.config, overrides), vocab_size=1000)
    # BOS + 6 BPE pieces counted with open_clip's BPE; --vocab-size sizes the LM head
    assert (objective.head_tokens, objective.vocab_size) == (7, 1000) and "open_clip" in objective.tokenizer_source
    assert objective.module.model.lm_head.out_features == 1000
    assert "give its size with --vocab-size N" in refusal(capsys, [*SMALL, *hf, *CUSTOM, "--gpus", "1"])

    unregistered = "--model.init_args.tokenizer={class_path: os.Popen, init_args: {args: ls}}"
    assert "not a registered genlip_lit class" in refusal(  # refused, not replaced by the stand-in
        capsys, [*SMALL, unregistered, *CUSTOM, "--gpus", "1", "--vocab-size", "1000"])

    def missing(*args, **kwargs):
        raise ImportError("no open_clip")

    monkeypatch.setattr(tokenizers, "OpenCLIPTokenizer", missing)  # nothing to stand in: said in one line
    assert "nor open_clip's BPE that stands in for it (no open_clip)" in refusal(
        capsys, [*SMALL, *hf, *CUSTOM, "--gpus", "1", "--vocab-size", "1000"])


def test_plan_options_come_from_a_file_as_print_config_writes_them(tmp_path, capsys) -> None:
    argv = [*SMALL, *CUSTOM, "--gpus", "2", "--global-batch", "32", "--samples", "1e6", "--mfu", "0.25"]
    with pytest.raises(SystemExit):
        main(["plan", *argv, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["config"] == ["experiments/quickstart.yaml"] and printed["gpus"] == 2 and printed["mfu"] == 0.25
    options = tmp_path / "plan.yaml"
    options.write_text(yaml.safe_dump(printed))
    args, overrides = parse(["--options", str(options), *SMALL[2:], "--gpus", "4"])
    assert (args.gpus, args.global_batch, args.peak_tflops, args.config) == (4, 32, 100.0, printed["config"])
    assert overrides == [("model.init_args.arch_overrides", "{depth: 2, width: 64, ffn_hidden: 128}"),
                         ("data.init_args.image_size", "32")]
    assert "give --mfu or --throughput-log, not both" in refusal(
        capsys, [*argv, "--throughput-log", str(tmp_path)])
