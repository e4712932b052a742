"""Data, checkpoints and runs in object storage, against a real S3 API (moto's server on 127.0.0.1, tests/s3_server.py).

The round trip shares one fitted run (module fixtures): `genlip optimize --output s3://...` -> `genlip fit` with
experiments/corpus_cpu.yaml as shipped on the bucket's data (10 steps), killed with SIGKILL at step 7 and resumed
from the bucket's last.ckpt -> caption, eval, probe and export from the bucket. Then one-line errors for what goes
wrong with a store. Skipped where moto[server] or s3fs is not installed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import REPO
from s3_server import BUCKET, require_s3_stack, s3_server

require_s3_stack()

from genlip_lit.cli import main  # noqa: E402
from genlip_lit.errors import GenLIPUserError  # noqa: E402

DATA = f"s3://{BUCKET}/shards"
RUNS = f"s3://{BUCKET}/runs"
NUM_IMAGES = 48


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with s3_server(str(tmp_path_factory.mktemp("aws"))) as env:
        yield env


def _keys(prefix: str = "") -> list[str]:
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    return sorted(p[len(BUCKET) + 1:] for p in fs.find(f"{BUCKET}/{prefix}"))


def _error_line(capsys, argv: list[str]) -> str:
    """The one `genlip: error:` line of a failing command (exit 2, no traceback)."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2, err
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith("genlip: error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from genlip_lit.data.synthetic import class_names
    from genlip_lit.ingest.demo_corpus import write_demo_corpus

    root = tmp_path_factory.mktemp("demo")
    classes = root / "classes.txt"
    classes.write_text("\n".join(class_names()) + "\n")
    return write_demo_corpus(str(root / "demo"), num_images=NUM_IMAGES, layouts=("webdataset",))["webdataset"], classes


def _optimize_args(corpus, output: str) -> list[str]:
    source, classes = corpus
    return ["optimize", "--input", source, "--output", output, "--max-side", "64", "--val-fraction", "0.2",
            "--num-workers", "1", "--classes", str(classes)]


@pytest.fixture(scope="module")
def shards(s3, corpus, tmp_path_factory):
    """The demo corpus optimized into the bucket, from a scratch working directory (no `s3:` folder may appear)."""
    cwd = tmp_path_factory.mktemp("cwd")
    before = os.getcwd()
    os.chdir(cwd)
    try:
        assert main(_optimize_args(corpus, DATA)) == 0
    finally:
        os.chdir(before)
    assert os.listdir(cwd) == []  # nothing local beside the staging folder in the cache
    return DATA


@pytest.fixture(scope="module")
def fitted(shards, tmp_path_factory):
    """corpus_cpu.yaml on the bucket's data, runs in the bucket (`--trainer.default_root_dir s3://...`), killed
    (SIGKILL) at step 7 in its own process. Returns the `genlip fit` arguments that resume it from the bucket's
    last.ckpt (step 5) to step 10."""
    work = tmp_path_factory.mktemp("fit")
    argv = ["fit", "--config", "experiments/corpus_cpu.yaml", f"--data.init_args.data_dir={DATA}",
            f"--trainer.default_root_dir={RUNS}", "--trainer.max_steps=10", "--checkpoint.every_n_train_steps=5",
            "--trainer.enable_progress_bar=false", f"--data.init_args.cache_dir={work}/cache",
            # the recipe's end-of-fit evaluations cost minutes on 2 busy cores: `genlip eval` runs them from the
            # bucket in the next test instead
            "--trainer.callbacks=[]"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.path.join(REPO, "tests")]))
    killed = subprocess.run(
        [sys.executable, "-m", "genlip_lit.cli", *argv,
         "--trainer.callbacks+={class_path: s3_server.SigkillAtStep, init_args: {step: 7}}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    first = "runs/corpus_cpu/version_0/checkpoints"
    assert {f"{first}/step=5.ckpt", f"{first}/last.ckpt"} <= set(_keys("runs")), _keys("runs")
    return argv + [f"--ckpt_path={RUNS}/corpus_cpu/version_0/checkpoints/last.ckpt"]


@pytest.mark.slow
def test_optimize_writes_the_dataset_into_the_bucket_as_a_local_run_would(shards, corpus, tmp_path, capsys):
    local = tmp_path / "local"
    assert main(_optimize_args(corpus, str(local))) == 0
    keys = _keys("shards")
    assert keys == ["shards/genlip_meta.json", "shards/genlip_report.json", "shards/train/chunk-0-0.bin",
                    "shards/train/index.json", "shards/val/chunk-0-0.bin", "shards/val/index.json"]
    from genlip_lit.storage import paths as storage

    for split in ("train", "val"):  # the same samples, chunk for chunk (the staged run is the local run)
        remote = storage.read_json(f"{DATA}/{split}/index.json")
        here = json.loads((local / split / "index.json").read_text())
        assert remote["chunks"] == here["chunks"]
        assert storage.read_bytes(f"{DATA}/{split}/chunk-0-0.bin") == (local / split / "chunk-0-0.bin").read_bytes()
    from genlip_lit.studies.llm_loading import data_root, load_caption_data

    train, held_out = load_caption_data(data_root(DATA), 8, 4, seed=0)  # `genlip llm-probe --data s3://...`
    assert len(train.images) == 8 and len(held_out.captions) == 4 and held_out.source == f"{DATA}/val"
    meta = storage.read_json(f"{DATA}/genlip_meta.json")
    assert meta["class_names"] == json.loads((local / "genlip_meta.json").read_text())["class_names"]
    # the same command again is refused as locally; --overwrite replaces the dataset
    line = _error_line(capsys, _optimize_args(corpus, DATA))
    assert line == f"genlip: error: {DATA} already holds a dataset: choose another prefix, or pass --overwrite to " \
                   "replace it (--append adds inputs)"
    assert ".genlip_lock" not in " ".join(_keys("shards"))  # the lock object is gone after every run


@pytest.mark.slow
def test_fit_from_the_bucket_survives_sigkill_and_resumes_from_the_bucket(fitted, capsys):
    assert main(fitted) == 0
    err = capsys.readouterr().err
    # the compact vocabulary was built from the bucket's captions (all 39 train captions, the whole split)
    assert "compact vocabulary: " in err and f"train captions of {DATA}" in err
    closing = [line for line in err.splitlines() if "done. checkpoint:" in line]
    resumed = f"{RUNS}/corpus_cpu/version_1/checkpoints"
    assert closing and f"done. checkpoint: {resumed}/last.ckpt. next: genlip caption --ckpt {RUNS}/corpus_cpu/" \
                       "version_1 IMAGE" in closing[0]
    keys = set(_keys("runs"))
    assert {f"runs/corpus_cpu/version_1/checkpoints/{n}" for n in ("step=10.ckpt", "last.ckpt")} <= keys
    assert "runs/corpus_cpu/version_1/config.yaml" in keys
    from genlip_lit.checkpoints.integrity import read_checkpoint

    last = read_checkpoint(f"{resumed}/last.ckpt")
    assert last["global_step"] == 10 and last["genlip_unknown_tokens"] == 0
    assert read_checkpoint(f"{RUNS}/corpus_cpu/version_0/checkpoints/step=5.ckpt")["global_step"] == 5
    assert not os.path.exists(os.path.join(REPO, "s3:")) and not os.path.exists("s3:")


@pytest.mark.slow
def test_caption_eval_probe_and_export_read_the_run_from_the_bucket(fitted, tmp_path, capsys):
    from genlip_lit.checkpoints.loading import load_checkpoint, resolve_checkpoint
    from genlip_lit.storage import paths as storage

    if not storage.isfile(f"{RUNS}/corpus_cpu/version_1/checkpoints/last.ckpt"):
        main(fitted)  # this test run alone: the resume test did not run first
        capsys.readouterr()
    ckpt = resolve_checkpoint(RUNS)  # a run dir in the bucket: its newest last.ckpt
    assert ckpt == f"{RUNS}/corpus_cpu/version_1/checkpoints/last.ckpt"
    image = tmp_path / "scene.png"
    from genlip_lit.data.synthetic import SceneConfig, generate_scene

    generate_scene(3, 0, SceneConfig(image_size=64, patch_size=8)).image.save(image)
    assert main(["caption", "--ckpt", RUNS, str(image)]) == 0
    captioned = capsys.readouterr().out
    assert str(image) in captioned

    assert main(["eval", "--ckpt", RUNS, "--config", "experiments/eval.yaml", "--output", str(tmp_path / "eval"),
                 "--threads", "1"]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    capsys.readouterr()
    zero_shot = report["evaluations"]["zero_shot"]
    assert "skipped" not in zero_shot["details"]  # class names came from the bucket's genlip_meta.json

    assert main(["probe", "--ckpt", RUNS, "--data", DATA, "--budget", "39", "--test-budget", "9",
                 "--attentive-epochs", "1", "--threads", "1"]) == 0
    assert f"probe of {RUNS} on {DATA}:" in capsys.readouterr().out

    assert main(["export", "--ckpt", RUNS, "--output", str(tmp_path / "encoder")]) == 0
    from genlip_lit import load_vision_encoder

    encoder = load_vision_encoder(str(tmp_path / "encoder"))
    module, _ = load_checkpoint(ckpt)
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():  # the exported weights are the bucket's checkpoint's
        torch.testing.assert_close(encoder(pixels), module.encode_patches(pixels), rtol=0, atol=1e-6)
    card = json.loads((tmp_path / "encoder" / "config.json").read_text())
    assert card["source"]["checkpoint"] == ckpt
    from genlip_lit.checkpoints.loading import load_initial_weights

    assert load_initial_weights(module, RUNS) == ckpt  # `init_from: s3://...` (a next stage) reads it too


# ------------------------------------------------------------------ what goes wrong with a store: one line each
@pytest.fixture()
def fresh_clients():
    """s3fs caches a filesystem (with the credentials it found) per process: tests that change the environment
    start and end with none cached."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def test_a_mistyped_data_dir_is_one_line_naming_it(s3, capsys):
    line = _error_line(capsys, ["fit", "--config", "experiments/corpus_cpu.yaml",
                                f"--data.init_args.data_dir=s3://{BUCKET}/shardz"])
    assert line == (f"genlip: error: data_dir s3://{BUCKET}/shardz has no train/ litdata shards (no s3://{BUCKET}/"
                    f"shardz/train/index.json); write them with `genlip optimize --input SRC --output "
                    f"s3://{BUCKET}/shardz`")


@pytest.mark.parametrize("case", ["bucket", "credentials", "endpoint"])
def test_a_missing_bucket_credentials_or_endpoint_is_one_line_naming_the_url(case, s3, fresh_clients, monkeypatch,
                                                                             capsys):
    url = f"s3://{BUCKET}/shards"
    if case == "bucket":
        url = "s3://no-such-bucket/shards"
    elif case == "credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    else:
        monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # the discard port: nothing listens
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would take ~10 s
    line = _error_line(capsys, ["probe", "--ckpt", "missing.ckpt", "--data", url])
    expected = {
        "bucket": f"{url}/train/index.json: bucket 'no-such-bucket' does not exist at {s3['AWS_ENDPOINT_URL']}",
        "credentials": f"{url}/train/index.json: no credentials for the object store: set AWS_ACCESS_KEY_ID and "
                       "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)",
        "endpoint": f"{url}/train/index.json: cannot reach the object store at http://127.0.0.1:9: check "
                    "AWS_ENDPOINT_URL and that the server is up",
    }[case]
    assert line == f"genlip: error: {expected}"


def test_a_checkpoint_missing_from_the_bucket_is_one_line(s3, tmp_path, capsys):
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    line = _error_line(capsys, ["caption", "--ckpt", f"s3://{BUCKET}/runs/nothing-here", str(image)])
    assert line == f"genlip: error: checkpoint not found: 's3://{BUCKET}/runs/nothing-here'"
    line = _error_line(capsys, ["fit", "--config", "experiments/quickstart.yaml",
                                f"--ckpt_path=s3://{BUCKET}/runs/missing.ckpt"])
    assert line == f"genlip: error: checkpoint not found: s3://{BUCKET}/runs/missing.ckpt (--ckpt_path)"


def test_optimize_to_a_url_it_cannot_write_is_one_line_and_leaves_no_local_folder(s3, tmp_path, monkeypatch,
                                                                                   capsys):
    monkeypatch.chdir(tmp_path)
    line = _error_line(capsys, ["optimize", "--source", "synthetic", "--num-samples", "4",
                                "--output", "s3://no-such-bucket/shapes"])
    assert line == (f"genlip: error: s3://no-such-bucket/shapes: bucket 'no-such-bucket' does not exist at "
                    f"{s3['AWS_ENDPOINT_URL']}")
    assert os.listdir(tmp_path) == []  # no `s3:` folder (the old behaviour wrote ./s3:/no-such-bucket/shapes)


@pytest.mark.slow
def test_a_compact_vocabulary_is_checked_against_the_captions_in_the_bucket(s3, tmp_path, caplog):
    """The coverage guard reads remote captions as it reads local ones: a vocabulary that cannot spell them is
    refused, and one built from the bucket's corpus spells every one."""
    import s3fs
    from helpers import REAL_CAPTIONS, write_real_corpus

    from genlip_lit.data.caption_coverage import check_caption_coverage
    from genlip_lit.data.tokenizer import OpenCLIPTokenizer
    from genlip_lit.errors import GenLIPUserError

    local = write_real_corpus(tmp_path / "real")
    url = f"s3://{BUCKET}/real"
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    for split in ("train", "val"):
        for name in os.listdir(os.path.join(local, split)):
            fs.put_file(os.path.join(local, split, name), f"{BUCKET}/real/{split}/{name}")
    with pytest.raises(GenLIPUserError, match=rf"cannot spell the captions of data_dir {url}: 12 of 12 sampled"):
        check_caption_coverage(OpenCLIPTokenizer(compact_corpus="synthetic"), [url])
    own = OpenCLIPTokenizer(compact_corpus=url)
    check_caption_coverage(own, [url])  # built from this corpus: accepted
    assert own.unk_id not in own.encode(" ".join(REAL_CAPTIONS))


def test_an_http_endpoint_is_allowed_for_litdatas_obstore_downloads(monkeypatch):
    from litdata.streaming import downloader

    from genlip_lit.storage.paths import allow_http_endpoint

    monkeypatch.setattr(downloader, "_OBSTORE_CLIENT_OPTIONS", {"timeout": "200s"})
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://store.example")
    allow_http_endpoint()
    assert downloader._OBSTORE_CLIENT_OPTIONS == {"timeout": "200s"}  # https: nothing to allow
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9000")
    allow_http_endpoint()
    assert downloader._OBSTORE_CLIENT_OPTIONS == {"timeout": "200s", "allow_http": "true"}


@pytest.mark.slow
def test_append_to_a_dataset_in_the_bucket_uploads_only_the_new_units(s3, tmp_path):
    """`--append` works from the staging record (its chunks were deleted after the first upload): the merged
    index lists both units, and the first unit's chunk in the bucket is left as it was."""
    from genlip_lit.ingest.demo_corpus import write_demo_corpus
    from genlip_lit.storage import paths as storage

    first, second = (write_demo_corpus(str(tmp_path / name), num_images=16, layouts=("webdataset",), seed=seed)
                     ["webdataset"] for name, seed in (("a", 1), ("b", 2)))
    url = f"s3://{BUCKET}/appended"
    common = ["--output", url, "--max-side", "64", "--val-fraction", "0.2", "--num-workers", "1"]
    assert main(["optimize", "--input", first, *common]) == 0
    chunk = storage.read_bytes(f"{url}/train/chunk-0-0.bin")
    assert main(["optimize", "--input", second, "--append", *common]) == 0
    index = storage.read_json(f"{url}/train/index.json")
    assert [c["filename"] for c in index["chunks"]] == ["chunk-0-0.bin", "chunk-1-0.bin"]
    assert storage.read_bytes(f"{url}/train/chunk-0-0.bin") == chunk
    assert len(storage.streaming_dataset(f"{url}/train")) == sum(c["chunk_size"] for c in index["chunks"])


@pytest.mark.slow
def test_resume_finishes_an_upload_that_stopped_part_way(s3, corpus, tmp_path, capsys):
    """A run whose upload stopped before the meta file (written last) is finished by `--resume`, without
    ingesting again; until then readers see no finished dataset."""
    from genlip_lit.storage import paths as storage

    url = f"s3://{BUCKET}/interrupted"
    assert main(_optimize_args(corpus, url)) == 0
    storage.remove(f"{url}/genlip_meta.json")  # as if the upload died before its last object
    capsys.readouterr()
    assert main([*_optimize_args(corpus, url), "--resume"]) == 0
    assert capsys.readouterr().out.strip() == f"finished the upload of the interrupted run to {url}"
    assert storage.read_json(f"{url}/genlip_meta.json")["class_names"]


@pytest.mark.slow
def test_probe_full_streams_labelled_shards_from_the_bucket(shards, s3) -> None:
    """`genlip probe-full` reads labelled shards in a bucket as fit does: class names from the bucket's
    genlip_meta.json, every train and val sample decoded with its label (issue 27: local disk or object storage)."""
    from genlip_lit.data.synthetic import class_names
    from genlip_lit.eval.labelled import ShardLabelledSet
    from genlip_lit.studies.probe_data import ProbeDataModule

    dm = ProbeDataModule(DATA, batch_size=4, num_workers=0, image_size=32, augment="none")
    assert dm.class_names == list(class_names())
    for split in ("train", "val"):
        data = dm.dataset(split)
        assert len(data) == len(ShardLabelledSet(DATA, split)) > 0
        first = data[0]
        assert first["pixels"].shape == (3, 32, 32) and 0 <= first["label"] < len(class_names())
    with pytest.raises(GenLIPUserError, match="no train/ litdata shards"):
        ProbeDataModule(f"{DATA}-missing", batch_size=4)
