"""User errors of the project commands (commands/*.py through cli.main), one test per kind: a bad key in a
--config file, a value of the wrong type, an unknown class path, a missing checkpoint, data that cannot be read.
Each message names the culprit (key, flag, file or value) in at most 5 lines, with exit status 2; `genlip fit`'s
own are in tests/commands/test_fit.py. Plus: plain progress lines with counts when stderr is not a terminal."""

from __future__ import annotations

import io

import pytest
from helpers import REPO
from PIL import Image

from genlip_lit.cli import EXTRA_COMMANDS, main

MAX_LINES = 5


def refused(capsys, argv: list[str]) -> str:
    """The error text of `genlip ARGV`, checked to be a short `genlip: error:` message with exit status 2."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, argv
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("genlip: error: "), err
    assert len(err.splitlines()) <= MAX_LINES, err
    assert "usage:" not in err and "Traceback" not in err, err
    return err


def _png(path) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 0, 0)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue())
    return str(path)


@pytest.mark.parametrize("name", sorted(EXTRA_COMMANDS))
def test_an_unknown_key_in_a_config_file_names_the_key_and_the_file(name, tmp_path, capsys) -> None:
    config = tmp_path / "options.yaml"
    config.write_text("no_such_key: 1\n")
    flag = "--options" if name == "plan" else "--config"  # plan's --config is the fit config it plans
    err = refused(capsys, [name, flag, str(config)])
    assert f"{config}: no_such_key: not an option" in err


def test_a_misspelt_config_key_gets_the_closest_key(tmp_path, capsys) -> None:
    config = tmp_path / "optimize.yaml"
    config.write_text("output: out\nnum_sample: 3\n")
    err = refused(capsys, ["optimize", "--config", str(config)])
    assert "num_sample: not an option; did you mean 'num_samples'?" in err
    assert "no_" not in err.split("did you mean")[1]  # never the negation of a yes/no flag


@pytest.mark.parametrize("argv, culprit", [
    (["optimize", "--output", "o", "--num-samples", "many"], "--num-samples: expected int, got 'many'"),
    (["optimize", "--output", "o", "--input", "x", "--format", "zip"],
     "--format: got 'zip', expected one of 'auto', 'webdataset'"),
    (["caption", "--ckpt", "c", "a.png", "--temperature", "hot"], "--temperature: expected float, got 'hot'"),
    (["probe", "--ckpt", "c", "--data", "d", "--test-budget=x"], "--test-budget: expected int, got 'x'"),
    (["eval-res", "--ckpt", "c", "--output", "o", "--num-scenes", "x"], "--num-scenes: expected int, got 'x'"),
    (["llm-probe", "--encoder", "e", "--output", "o", "--lr", "fast"], "--lr: expected float, got 'fast'"),
    (["compare", "a.yaml", "--output", "o", "--max-steps", "x"], "--max-steps: expected int, got 'x'"),
    (["plan", "--config", "a.yaml", "--gpus", "x"], "--gpus: expected int, got 'x'"),
    (["import", "src", "--output", "o", "--format", "zip"], "--format: got 'zip', expected one of 'official'"),
])
def test_a_value_of_the_wrong_type_names_the_flag_and_the_value(argv, culprit, capsys) -> None:
    assert culprit in refused(capsys, argv)


def test_a_wrong_type_in_a_config_file_names_the_file(tmp_path, capsys) -> None:
    config = tmp_path / "probe.yaml"
    config.write_text("budget: lots\n")
    err = refused(capsys, ["probe", "--config", str(config), "--ckpt", "c", "--data", "d"])
    assert f"{config}: budget: expected int, got 'lots'" in err


def test_an_unknown_flag_gets_the_closest_flag(capsys) -> None:
    err = refused(capsys, ["export", "--ckpt", "c", "--output", "o", "--outptu", "p"])
    assert "--outptu: not an option; did you mean '--output'?" in err
    err = refused(capsys, ["plan", "--config", "a.yaml", "--gpuz", "3"])
    assert "--gpuz: not an option; did you mean '--gpu'?" in err


def test_config_files_that_cannot_be_read_are_named(tmp_path, capsys) -> None:
    missing = tmp_path / "missing.yaml"
    assert f"--config {missing}: file not found" in refused(capsys, ["probe", "--config", str(missing)])
    broken = tmp_path / "broken.yaml"
    broken.write_text("budget: [1, 2\n")
    err = refused(capsys, ["probe", "--config", str(broken)])
    assert f"--config {broken}: not valid YAML" in err and "line 2" in err
    assert f"--options {missing}: file not found" in refused(capsys, ["plan", "--options", str(missing)])


@pytest.mark.parametrize("class_path, culprit", [
    ("LinearProbes", "evaluations[0]: cannot import 'genlip_lit.callbacks.LinearProbes'"),
    ("nowhere.Thing", "evaluations[0]: cannot import 'nowhere.Thing' (No module named 'nowhere')"),
    ("genlip_lit.callbacks.Throughput", "genlip_lit.callbacks.Throughput is not an evaluation callback"),
])
def test_an_unknown_class_path_is_named(class_path, culprit, capsys) -> None:
    err = refused(capsys, ["eval", "--ckpt", "c", "--evaluations", f"[{{class_path: {class_path}}}]"])
    assert culprit in err
    if class_path == "LinearProbes":
        assert "did you mean genlip_lit.callbacks.LinearProbe?" in err


def test_a_missing_checkpoint_is_named(tmp_path, capsys) -> None:
    ckpt = str(tmp_path / "nope.ckpt")
    image = _png(tmp_path / "a.png")
    (tmp_path / "images").mkdir()
    for argv in (
        ["caption", "--ckpt", ckpt, image],
        ["caption-eval", "--ckpt", ckpt],
        ["eval", "--ckpt", ckpt, "--evaluations", "[LinearProbe]"],
        ["probe", "--ckpt", ckpt, "--data", str(tmp_path / "images")],
        ["eval-res", "--ckpt", ckpt, "--output", str(tmp_path / "res")],
        ["export", "--ckpt", ckpt, "--output", str(tmp_path / "enc")],
    ):
        assert f"checkpoint not found: '{ckpt}'" in refused(capsys, argv), argv
    (tmp_path / "run").mkdir()  # a run directory without a last.ckpt
    assert "no last.ckpt under" in refused(capsys, ["export", "--ckpt", str(tmp_path / "run"), "--output", "o"])


def test_data_that_cannot_be_read_is_named_before_anything_loads(tmp_path, capsys) -> None:
    nowhere = str(tmp_path / "nowhere")
    # the checkpoint does not exist either: the data is checked first, and named
    err = refused(capsys, ["probe", "--ckpt", "missing.ckpt", "--data", nowhere])
    assert f"--data {nowhere}: no such directory" in err
    err = refused(capsys, ["eval", "--ckpt", "missing.ckpt", "--evaluations", "[LinearProbe]",
                           "--data", f"{{data_dir: {nowhere}}}"])
    assert f"data.data_dir {nowhere}: no such directory" in err
    err = refused(capsys, ["eval", "--ckpt", "missing.ckpt", "--evaluations", "[LinearProbe]",
                           "--data", f"{{class_path: GenLIPDataModule, init_args: {{data_dir: [{nowhere}]}}}}"])
    assert f"data.data_dir {nowhere}: no such directory" in err  # a fit config's data block, copied
    err = refused(capsys, ["llm-probe", "--encoder", "missing", "--data", nowhere, "--output", str(tmp_path / "o")])
    assert f"--data '{nowhere}' does not exist" in err
    err = refused(capsys, ["optimize", "--input", nowhere, "--output", str(tmp_path / "shards")])
    assert f"--input '{nowhere}'" in err and "does not exist" in err
    assert f"image file not found: {nowhere}.png" in refused(capsys, ["caption", "--ckpt", "c", f"{nowhere}.png"])
    # a file that does not decode is skipped and counted by caption, the rest captioned (tests/commands/test_caption.py)


def test_progress_is_plain_lines_with_counts_when_stderr_is_not_a_terminal(tmp_path, capsys, monkeypatch) -> None:
    from genlip_lit.ingest import sources

    monkeypatch.setattr(sources, "FILES_PER_UNIT", 2)
    monkeypatch.delenv("GENLIP_PROGRESS", raising=False)
    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(6):
        _png(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"red box {i}")
    assert main(["optimize", "--input", str(folder), "--output", str(tmp_path / "out"), "--num-workers", "1",
                 "--val-fraction", "0"]) == 0
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("genlip: optimize:")]
    # one line per 5% at most (here every unit), each with the count, the total, the rate and an ETA
    assert [line.split(" (")[0] for line in lines[:3]] == [
        "genlip: optimize: 1/3 units", "genlip: optimize: 2/3 units", "genlip: optimize: 3/3 units"]
    assert len(lines) == 4 and "ETA" in lines[0] and "2 images (2 kept, 0 skipped)" in lines[0]
    assert lines[-1].startswith("genlip: optimize: done, 3 units in ") and "6 images (6 kept, 0 skipped)" in lines[-1]
    assert "\r" not in captured.err and "genlip: optimize:" not in captured.out  # no animation; not on stdout


@pytest.mark.parametrize("argv, prefix, full", [
    (["export", "--ckp", "c", "--output", "o"], "--ckp", "--ckpt"),
    (["optimize", "--output", "o", "--num-sample", "3"], "--num-sample", "--num-samples"),
    (["eval-res", "--ckpt", "c", "--output", "o", "--num-scene=3"], "--num-scene", "--num-scenes"),
    (["import", "src", "--output", "o", "--overwrit"], "--overwrit", "--overwrite"),
])
def test_a_prefix_of_a_flag_is_an_unknown_flag_never_the_flag(argv, prefix, full, capsys) -> None:
    err = refused(capsys, argv)
    assert err.startswith(f"genlip: error: {prefix}") and f"did you mean '{full}'?" in err, err


OUTPUT_COMMANDS = {  # every command with --output; "O" is replaced by the directory under test
    "export": ["export", "--ckpt", "c", "--output", "O"],
    "import": ["import", "src", "--output", "O"],
    "eval": ["eval", "--ckpt", "c", "--config", "EVAL", "--output", "O"],
    "probe": ["probe", "--ckpt", "c", "--data", "DATA", "--output", "O"],
    "eval-res": ["eval-res", "--ckpt", "c", "--output", "O"],
    "compare": ["compare", "a.yaml", "--output", "O"],
    "llm-probe": ["llm-probe", "--encoder", "e", "--output", "O"],
    "caption": ["caption", "--ckpt", "c", "a.png", "--output", "O"],
    "caption-eval": ["caption-eval", "--ckpt", "c", "--output", "O"],
}


@pytest.mark.parametrize("name", sorted(OUTPUT_COMMANDS))
def test_an_output_the_command_did_not_write_is_refused_before_any_work(name, tmp_path, capsys) -> None:
    """At 74076bd `export --output DIR` replaced a user's README.md and config.json, `import` a genlip.ckpt; an
    --output that was a file gave a FileExistsError traceback."""
    import json
    import os

    repo = REPO
    (tmp_path / "data").mkdir()

    def argv(output) -> list[str]:
        swap = {"O": str(output), "EVAL": os.path.join(repo, "experiments", "eval.yaml"), "DATA": str(tmp_path / "data")}
        return [swap.get(a, a) for a in OUTPUT_COMMANDS[name]]

    (tmp_path / "file").write_text("x")
    err = refused(capsys, argv(tmp_path / "file"))
    assert err == f"genlip: error: --output {tmp_path / 'file'}: is a file, not a directory: name a directory " \
                  "(new or empty)"
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    err = refused(capsys, argv(mine))
    assert err == f"genlip: error: --output {mine}: the directory is not empty (notes.txt) and genlip {name} did " \
                  "not write it: choose a new directory, or pass --overwrite to write into it"
    other = "export" if name != "export" else "import"
    (mine / ".genlip_output.json").write_text(json.dumps({"command": other, "files": []}))
    assert f"(written by genlip {other})" in refused(capsys, argv(mine))
    assert (mine / "notes.txt").read_text() == "mine"
    err = refused(capsys, [*argv(mine), "--overwrite"])  # lifted: the command goes on to its next check
    assert "--output" not in err.split(":")[1]


# ---------------------------------------------------------------------------------------------- damaged shards
@pytest.fixture(scope="module")
def damaged_shards(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """{kind: (shard directory, the file its error must name)}: a train chunk cut to half its bytes (a copy cut
    short), an index.json cut mid-way, a train chunk of the right size whose header is garbled (bytes rotted in
    place: only reading it finds out)."""
    import glob

    from helpers import write_real_corpus

    root = tmp_path_factory.mktemp("damaged")
    chunk_dir = write_real_corpus(root / "chunk")
    (chunk,) = glob.glob(f"{chunk_dir}/train/chunk-*.bin")
    with open(chunk, "rb") as fh:
        data = fh.read()
    with open(chunk, "wb") as fh:
        fh.write(data[: len(data) // 2])
    index_dir = write_real_corpus(root / "index")
    index = f"{index_dir}/val/index.json"
    with open(index) as fh:
        text = fh.read()
    with open(index, "w") as fh:
        fh.write(text[: len(text) // 2])
    rot_dir = write_real_corpus(root / "rot")
    (rotten,) = glob.glob(f"{rot_dir}/train/chunk-*.bin")
    with open(rotten, "r+b") as fh:
        fh.seek(4)
        fh.write(b"\xff" * 200)
    return {"chunk": (chunk_dir, chunk), "index": (index_dir, index), "rot": (rot_dir, rotten)}


def _damage_line(capsys, argv: list[str], culprit: str) -> None:
    """Exit 2 and one `genlip: error:` line naming the damaged file and the fix; no traceback, no parse error."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2, argv
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("genlip: error: ")]
    assert len(errors) == 1 and culprit in errors[0] and "re-run `genlip optimize`" in errors[0], err
    assert "Traceback" not in err and "Union" not in err and len(err.strip().splitlines()) <= MAX_LINES, err


@pytest.mark.parametrize("kind", ["chunk", "index"])
def test_damaged_shards_are_one_line_naming_the_file_in_every_command(kind, damaged_shards, tmp_path, capsys,
                                                                       monkeypatch) -> None:
    """At 74076bd a truncated chunk ended fit in a 32-frame jsonargparse "Union subtypes" error (the compact
    vocabulary reads the captions while the config is instantiated) and eval in a 25-frame ChunkWaitTimeoutError."""
    import os

    from helpers import tiny_fit_args

    monkeypatch.chdir(REPO)
    corpus, culprit = damaged_shards[kind]
    fit = tiny_fit_args(tmp_path, extra=["--data.init_args.synthetic=null", f"--data.init_args.data_dir={corpus}",
                                         "--model.init_args.tokenizer.init_args.compact_corpus=data"])
    _damage_line(capsys, fit, culprit)
    _damage_line(capsys, ["eval", "--ckpt", "missing.ckpt", "--evaluations", "[LinearProbe]", "--data",
                          f"{{data_dir: {corpus}}}"], culprit)
    _damage_line(capsys, ["probe", "--ckpt", "missing.ckpt", "--data", corpus], culprit)
    _damage_line(capsys, ["llm-probe", "--encoder", "missing", "--data", corpus, "--output", str(tmp_path / "l")],
                 culprit)
    config = tmp_path / "on_damaged.yaml"
    config.write_text(f"data:\n  init_args:\n    data_dir: {corpus}\n")
    for argv in (["compare", "experiments/compare/clip.yaml", "--output", str(tmp_path / "c1"), "--",
                  f"--data.init_args.data_dir={corpus}"],
                 ["compare", str(config), "--output", str(tmp_path / "c2")]):
        _damage_line(capsys, argv, culprit)
    assert not os.path.exists(tmp_path / "c1" / "clip")  # no run was started


@pytest.mark.parametrize("kind", ["chunk", "index"])
def test_damaged_shards_are_refused_where_they_are_opened(kind, damaged_shards, tmp_path) -> None:
    """The readers themselves (fit's data module, the compact vocabulary and coverage check, probe's labelled
    shards) refuse before litdata reads: the same line when a command reaches them another way (a checkpoint's
    data_dir)."""
    from genlip_lit.data.caption_coverage import shard_captions
    from genlip_lit.data.datamodule import GenLIPDataModule
    from genlip_lit.data.tokenizer import CaptionEncoder, OpenCLIPTokenizer
    from genlip_lit.errors import GenLIPUserError
    from genlip_lit.eval.labelled import ShardLabelledSet

    corpus, culprit = damaged_shards[kind]
    split = "train" if kind == "chunk" else "val"
    dm = GenLIPDataModule(data_dir=corpus, image_size=16, batch_size=4, num_workers=0,
                          cache_dir=str(tmp_path / "cache"),
                          caption_encoder=CaptionEncoder(OpenCLIPTokenizer(), max_len=16))
    for read in (lambda: dm.setup("fit"), lambda: ShardLabelledSet(corpus, split)) + (
            (lambda: shard_captions(corpus, 10),) if kind == "chunk" else ()):
        with pytest.raises(GenLIPUserError) as info:
            read()
        assert culprit in str(info.value) and "genlip optimize" in str(info.value)
        assert len(str(info.value).splitlines()) == 1


@pytest.mark.slow
def test_a_chunk_damaged_in_place_is_one_line_when_it_is_read(damaged_shards, tmp_path, capsys, monkeypatch) -> None:
    """Same size as its index says, garbled header: litdata's struct.error became one line naming the chunk, read
    in the main process (the compact vocabulary, probe's labelled shards) or in a loader worker (the line torch
    re-raises holds the worker's traceback: the CLI prints the original one)."""

    from helpers import tiny_fit_args

    from genlip_lit.errors import GenLIPUserError
    from genlip_lit.eval.labelled import ShardLabelledSet

    monkeypatch.chdir(REPO)
    corpus, chunk = damaged_shards["rot"]
    data = ["--data.init_args.synthetic=null", f"--data.init_args.data_dir={corpus}"]
    compact = tiny_fit_args(tmp_path / "a", extra=[*data, "--model.init_args.tokenizer.init_args.compact_corpus=data"])
    _damage_line(capsys, compact, chunk)
    in_worker = tiny_fit_args(tmp_path / "b", extra=[*data, "--model.init_args.tokenizer.init_args.compact_corpus=null",
                                                     "--data.init_args.num_workers=1"])
    _damage_line(capsys, in_worker, chunk)
    with pytest.raises(GenLIPUserError, match="cannot be read .* the chunk is damaged; re-run `genlip optimize`"):
        ShardLabelledSet(corpus, "train").num_classes  # noqa: B018 - reads every label
