"""checkpoints/loading.py and every path that reads a checkpoint: a file cannot run code, and a damaged one is refused.

Two hostile checkpoints are built from a real one inside the test: a pickle payload (unpickling it would create
a marker file) and a weights-only-clean file naming `subprocess.Popen` as its tokenizer (which at 704228a ran
`touch MARKER` in caption and export). Each is refused with ONE line naming the file, by every command that takes
`--ckpt`, by `init_from`, by `--ckpt_path` resume and by compare's report reader; the marker never appears.
"""

from __future__ import annotations

import glob
import os

import pytest
import torch
from helpers import REPO, TINY_ARCH, tiny_fit_args

from genlip_lit.checkpoints.integrity import weights_sha256
from genlip_lit.checkpoints.loading import load_checkpoint, load_initial_weights
from genlip_lit.cli import main
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules import GenLIPModule
from genlip_lit.studies.compare_report import collect_result


class MarkerPayload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def clean_ckpt(quickstart_run) -> str:
    return quickstart_run  # tests/conftest.py: this module's copy of a 2-step quickstart run


def _hostile(clean: str, tmp, kind: str) -> tuple[str, str]:
    """(checkpoint path, marker path) of a tampered copy of `clean`."""
    marker = str(tmp / f"marker-{kind}")
    ckpt = torch.load(clean, weights_only=True)
    if kind == "pickle":
        ckpt["genlip_notes"] = MarkerPayload(marker)
    else:  # weights-only clean, but names a class that runs a command when "rebuilding the tokenizer"
        ckpt["genlip_tokenizer"] = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", marker]},
                                    "state": {}}
        ckpt["hyper_parameters"]["_class_path"] = "subprocess.Popen"
    path = str(tmp / f"{kind}.ckpt")
    torch.save(ckpt, path)
    return path, marker


def _commands(ckpt: str, tmp) -> dict[str, list[str]]:
    from PIL import Image

    image = tmp / "img.png"
    Image.new("RGB", (32, 32), (200, 10, 10)).save(image)
    (tmp / "folder" / "cls").mkdir(parents=True, exist_ok=True)
    return {
        "caption": ["caption", "--ckpt", ckpt, str(image)],
        "caption-eval": ["caption-eval", "--ckpt", ckpt, "--objects", "1", "--num-scenes", "2"],
        "eval": ["eval", "--ckpt", ckpt, "--config", "experiments/eval.yaml", "--output", str(tmp / "ev")],
        "probe": ["probe", "--ckpt", ckpt, "--data", str(tmp / "folder")],
        "eval-res": ["eval-res", "--ckpt", ckpt, "--resolutions", "32", "--output", str(tmp / "res")],
        "export": ["export", "--ckpt", ckpt, "--output", str(tmp / "enc")],
    }


def _refused_in_one_line(argv: list[str], path: str, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code not in (0, None)
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and path in errors[0], errors
    return errors[0]


@pytest.mark.parametrize("kind", ["pickle", "popen"])
def test_every_ckpt_command_refuses_hostile_checkpoints(clean_ckpt, tmp_path, capsys, kind) -> None:
    os.chdir(REPO)
    path, marker = _hostile(clean_ckpt, tmp_path, kind)
    for name, argv in _commands(path, tmp_path).items():
        line = _refused_in_one_line(argv, path, capsys)
        assert ("refused" if kind == "pickle" else "not a registered genlip_lit class") in line, (name, line)
        assert not os.path.exists(marker), name
    assert not os.path.exists(tmp_path / "enc" / "model.safetensors")


@pytest.mark.parametrize("kind", ["pickle", "popen"])
def test_init_from_resume_and_compare_refuse_hostile_checkpoints(clean_ckpt, tmp_path, capsys, kind) -> None:
    os.chdir(REPO)
    path, marker = _hostile(clean_ckpt, tmp_path, kind)
    if kind == "pickle":  # init_from reads weights only: the class names are not used there
        with pytest.raises(GenLIPUserError, match="refused") as info:
            GenLIPModule(arch_overrides=TINY_ARCH, init_from=path)
        assert path in str(info.value)
    # `fit --ckpt_path`: vetted before LightningCLI imports the class it names or Lightning unpickles it
    _refused_in_one_line(tiny_fit_args(tmp_path, max_steps=4, extra=[f"--ckpt_path={path}"]), path, capsys)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("trainer: {}\n")
    os.replace(path, run / "checkpoints" / "last.ckpt")
    with pytest.raises(GenLIPUserError) as info:
        collect_result("x", "x.yaml", run)
    assert str(run / "checkpoints" / "last.ckpt") in str(info.value)
    assert not os.path.exists(marker)


def test_damaged_checkpoints_are_refused(clean_ckpt, tmp_path) -> None:
    data = bytearray(open(clean_ckpt, "rb").read())
    ckpt = torch.load(clean_ckpt, weights_only=True)
    assert ckpt["genlip_weights_sha256"] == weights_sha256(ckpt["state_dict"])
    # 64 flipped bytes inside a weight tensor's data: torch reads the file without complaint
    name, tensor = max(ckpt["state_dict"].items(), key=lambda kv: kv[1].numel())
    start = bytes(data).find(tensor.numpy().tobytes())
    assert start > 0
    for i in range(start + 64, start + 128):
        data[i] ^= 0xFF
    flipped = tmp_path / "flipped.ckpt"
    flipped.write_bytes(bytes(data))
    assert not torch.equal(torch.load(flipped, weights_only=True)["state_dict"][name], tensor)
    with pytest.raises(GenLIPUserError, match="do not match the sha256"):
        load_checkpoint(str(flipped))
    module = GenLIPModule(arch_overrides=TINY_ARCH, tokenizer=load_checkpoint(clean_ckpt)[0].tokenizer)
    with pytest.raises(GenLIPUserError, match="do not match the sha256"):
        load_initial_weights(module, str(flipped))
    # a diverged run's weights (digest consistent with them): refused, naming the tensor
    nan = {**ckpt, "state_dict": {**ckpt["state_dict"], name: tensor.clone().fill_(float("nan"))}}
    nan["genlip_weights_sha256"] = weights_sha256(nan["state_dict"])
    torch.save(nan, tmp_path / "nan.ckpt")
    for load in (lambda p: load_checkpoint(p), lambda p: load_initial_weights(module, p)):
        with pytest.raises(GenLIPUserError, match=f"weight '{name}' holds NaN or inf"):
            load(str(tmp_path / "nan.ckpt"))
    # sizes that do not fit the stored tensors: refused before the module is allocated
    huge = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "arch_overrides": {"depth": 2, "width": 1 << 20,
                                                                                     "ffn_hidden": 128}}}
    torch.save(huge, tmp_path / "huge.ckpt")
    with pytest.raises(GenLIPUserError, match="do not fit the architecture"):
        load_checkpoint(str(tmp_path / "huge.ckpt"))


def test_resume_with_ckpt_path_loads_weights_only(clean_ckpt, tmp_path) -> None:
    """Lightning's own resume path reads genlip checkpoints weights-only and checks their digest."""
    os.chdir(REPO)
    cache = torch.load(clean_ckpt, weights_only=True)["datamodule_hyper_parameters"]["cache_dir"]
    extra = [f"--ckpt_path={clean_ckpt}", f"--data.init_args.cache_dir={cache}"]  # the same data stream
    assert main(tiny_fit_args(tmp_path, max_steps=3, extra=extra)) == 0
    (last,) = glob.glob(f"{tmp_path}/runs/*/version_*/checkpoints/last.ckpt")
    assert torch.load(last, weights_only=True)["global_step"] == 3


def test_nested_class_paths_are_vetted_before_anything_imports_them(clean_ckpt, tmp_path, capsys, monkeypatch):
    """At 74076bd `fit --ckpt_path` vetted only the top-level class: a tokenizer class path nested in the
    hyper-parameters reached jsonargparse, which imported its module (its import-time code ran)."""
    os.chdir(REPO)
    marker = tmp_path / "imported"
    (tmp_path / "thatmodule.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Zen:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ckpt = torch.load(clean_ckpt, weights_only=True)
    nested = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "tokenizer": {"class_path": "thatmodule.Zen"}}}
    bare = {**ckpt, "hyper_parameters": {**ckpt["hyper_parameters"], "tokenizer": "thatmodule.Zen"}}
    data = {**ckpt, "datamodule_hyper_parameters": {**ckpt["datamodule_hyper_parameters"],
                                                    "_class_path": "thatmodule.Zen"}}
    for name, tampered in (("nested", nested), ("bare", bare), ("data", data)):
        path = str(tmp_path / f"{name}.ckpt")
        torch.save(tampered, path)
        argvs = {
            "fit --ckpt_path": tiny_fit_args(tmp_path, max_steps=4, extra=[f"--ckpt_path={path}"]),
            "init_from": tiny_fit_args(tmp_path, max_steps=4, extra=[f"--model.init_args.init_from={path}"]),
            **{k: v for k, v in _commands(path, tmp_path).items() if k in ("caption", "export", "eval", "probe")},
        }
        for command, argv in argvs.items():
            capsys.readouterr()
            with pytest.raises(SystemExit) as info:
                main(argv)
            err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
            assert info.value.code == 2 and len(err) == 1, (name, command, err)
            assert err[0].startswith(f"genlip: error: {path} names class 'thatmodule.Zen' at "), (command, err)
            assert not marker.exists() and "thatmodule" not in __import__("sys").modules, (name, command)
