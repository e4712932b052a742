"""genlip_lit/checkpoints/integrity.py and genlip_lit/checkpoints/registry.py: files are read weights-only, weights carry a digest,
class names resolve only against the registry. Every hostile payload is built here, inside the test."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from genlip_lit.checkpoints import registry
from genlip_lit.checkpoints.integrity import first_nonfinite, read_checkpoint, verify_weights, weights_sha256
from genlip_lit.data.tokenizer import OpenCLIPTokenizer
from genlip_lit.errors import GenLIPUserError
from genlip_lit.modules import CaptionerModule, ContrastiveModule, GenLIPModule


class MarkerPayload:
    """Unpickling this calls open(marker, "w"): the file appears iff a loader ran code from the file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_payloads_are_refused_in_one_line_and_never_run(tmp_path) -> None:
    marker = tmp_path / "ran"
    zipped = tmp_path / "zipped.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}, "x": MarkerPayload(str(marker))}, zipped)
    legacy = tmp_path / "legacy.ckpt"
    legacy.write_bytes(pickle.dumps({"x": MarkerPayload(str(marker))}, protocol=2))
    for path, expected in ((zipped, "refused to load: .*GLOBAL io.open"), (legacy, "refused to load|not a readable")):
        with pytest.raises(GenLIPUserError, match=expected) as info:
            read_checkpoint(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    assert not marker.exists()


def test_corrupt_and_foreign_files_are_named(tmp_path) -> None:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.arange(1000.0)}}, good)
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "text": b"not a checkpoint"}
    for name, content in cases.items():
        path = tmp_path / f"{name}.ckpt"
        path.write_bytes(content)
        with pytest.raises(GenLIPUserError, match="is not a readable checkpoint") as info:
            read_checkpoint(str(path))
        assert "\n" not in str(info.value)
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(GenLIPUserError, match="not a dict"):
        read_checkpoint(str(tmp_path / "list.ckpt"))
    with pytest.raises(GenLIPUserError, match="checkpoint not found"):
        read_checkpoint(str(tmp_path / "absent.ckpt"))


def test_weights_digest_catches_any_change_and_nonfinite_weights_are_named() -> None:
    state = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.tensor(1.5, dtype=torch.bfloat16),
             "n": torch.tensor([True, False])}
    digest = weights_sha256(state)
    assert digest == weights_sha256(dict(reversed(list(state.items()))))  # order of the dict does not matter
    assert digest == weights_sha256({k: v.clone() for k, v in state.items()})
    flipped = {**state, "b": state["b"].clone()}
    flipped["b"].view(-1)[4] = 4.000001
    assert weights_sha256(flipped) != digest
    assert weights_sha256({**state, "b": state["b"].reshape(3, 2)}) != digest  # same bytes, other shape
    assert weights_sha256({**state, "b": state["b"].double()}) != digest
    ckpt = {"state_dict": flipped, "genlip_weights_sha256": digest}
    with pytest.raises(GenLIPUserError, match="x.ckpt: the weights do not match the sha256"):
        verify_weights(ckpt, "x.ckpt")
    bad = {**state, "b": torch.tensor([[0.0, float("nan")]])}
    assert first_nonfinite(bad) == "b" and first_nonfinite(state) is None
    with pytest.raises(GenLIPUserError, match="weight 'b' holds NaN or inf"):
        verify_weights({"state_dict": bad, "genlip_weights_sha256": weights_sha256(bad)}, "x.ckpt")
    verify_weights({"state_dict": state}, "legacy.ckpt")  # no digest (older checkpoints): finiteness only


def test_registry_resolves_own_classes_and_registered_plugins_only(monkeypatch) -> None:
    # the plug-in registered below is this test's own: later tests (the objective contract) see the registry as it was
    monkeypatch.setattr(registry, "_PLUGINS", {kind: dict(classes) for kind, classes in registry._PLUGINS.items()})
    assert registry.resolve("module", "genlip_lit.modules.genlip.GenLIPModule", "f") is GenLIPModule
    assert registry.resolve("module", "genlip_lit.modules.GenLIPModule", "f") is GenLIPModule  # the config alias
    assert registry.resolve("module", "genlip_lit.modules.contrastive.ContrastiveModule", "f") is ContrastiveModule
    assert registry.resolve("module", "genlip_lit.modules.captioner.CaptionerModule", "f") is CaptionerModule
    assert registry.resolve("tokenizer", "genlip_lit.data.tokenizer.OpenCLIPTokenizer", "f") is OpenCLIPTokenizer
    for kind, name in (("tokenizer", "subprocess.Popen"), ("module", "os.system"), ("module", "antigravity.X"),
                       ("tokenizer", "genlip_lit.modules.genlip.GenLIPModule"), ("module", 42)):
        with pytest.raises(GenLIPUserError, match="file.ckpt") as info:
            registry.resolve(kind, name, "file.ckpt")
        assert "\n" not in str(info.value)
    assert "antigravity" not in __import__("sys").modules  # refused names are never imported

    class MyGenLIP(GenLIPModule):
        pass

    name = registry.class_path(MyGenLIP)
    with pytest.raises(GenLIPUserError, match="not a registered"):
        registry.resolve("module", name, "f")
    assert registry.register(MyGenLIP) is MyGenLIP
    assert registry.resolve("module", name, "f") is MyGenLIP and name in registry.known("module")
    # the class a user's own config names is trusted (imported by that name, and only a genlip subclass)
    assert registry.resolve("module", "genlip_lit.modules.genlip.GenLIPModule", "f", allow=("x.Y",)) is GenLIPModule
    with pytest.raises(GenLIPUserError, match="not a registered"):
        registry.resolve("module", "subprocess.Popen", "f", allow=("subprocess.Popen",))
    with pytest.raises(GenLIPUserError, match="neither an EncoderModule nor a Tokenizer"):
        registry.register(dict)


def test_resolve_never_imports_an_unregistered_module(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "sideeffect_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(GenLIPUserError):
        registry.resolve("module", "sideeffect_mod.X", "f.ckpt")
    assert not marker.exists() and not os.path.exists(marker)


def test_a_file_cannot_mark_its_own_weights_verified(tmp_path) -> None:
    from genlip_lit.checkpoints.integrity import VERIFIED_KEY

    state = {"w": torch.ones(3)}
    digest = weights_sha256(state)
    nan = {"w": torch.tensor([1.0, float("nan"), 2.0])}
    cases = {  # what a hostile or unlucky file carries beside the key that used to switch the checks off
        "nan": ({"state_dict": nan, "genlip_weights_sha256": weights_sha256(nan)}, "holds NaN or inf"),
        "stale": ({"state_dict": {"w": torch.full((3,), 2.0)}, "genlip_weights_sha256": digest}, "do not match"),
    }
    for name, (ckpt, expected) in cases.items():
        for flag in (True, 1, "yes", {"state": "x"}):
            with pytest.raises(GenLIPUserError, match=expected):
                verify_weights({**ckpt, VERIFIED_KEY: flag}, f"{name}.ckpt")
        path = tmp_path / f"{name}.ckpt"
        torch.save({**ckpt, VERIFIED_KEY: True}, path)
        loaded = read_checkpoint(str(path))
        assert VERIFIED_KEY not in loaded  # dropped on read
        with pytest.raises(GenLIPUserError, match=expected):
            verify_weights(loaded, str(path))
    # a dict verified in this process is not checked twice, but only while it holds the same state_dict
    good = {"state_dict": state, "genlip_weights_sha256": digest}
    verify_weights(good, "good.ckpt")
    good["state_dict"]["w"].fill_(float("nan"))  # (in place: same object, still counted as checked)
    verify_weights(good, "good.ckpt")
    good["state_dict"] = dict(nan)  # another object: checked again
    with pytest.raises(GenLIPUserError, match="do not match"):
        verify_weights(good, "good.ckpt")


def test_every_class_path_anywhere_in_a_checkpoint_is_vetted_without_importing_it(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    (tmp_path / "thatmodule.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Zen: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    clean = {  # what `genlip fit` writes (LightningCLI's private keys included)
        "state_dict": {"w": torch.ones(2)},
        "genlip_module_class": "genlip_lit.modules.genlip.GenLIPModule",
        "hyper_parameters": {"_class_path": "genlip_lit.modules.GenLIPModule", "arch": "tiny",
                             "_instantiator": "lightning.pytorch.cli.instantiate_module",
                             "tokenizer": {"class_path": "genlip_lit.data.tokenizer.HFTokenizer",
                                           "init_args": {"path": "tokenizer.json"}}},
        "datamodule_hyper_parameters": {"_class_path": "genlip_lit.data.datamodule.GenLIPDataModule",
                                        "data_dir": "corpus.Train", "cache_dir": "/tmp/x"},
        "genlip_tokenizer": {"class_path": "genlip_lit.data.tokenizer.OpenCLIPTokenizer", "init_args": {},
                             "state": {"words": ["subprocess.Popen", "os.system"]}},  # data, never a class
    }
    registry.vet_class_paths(clean, "clean.ckpt")
    hostile = {
        "hyper_parameters.tokenizer.class_path": lambda c: c["hyper_parameters"]["tokenizer"].update(
            class_path="thatmodule.Zen"),
        "hyper_parameters.tokenizer": lambda c: c["hyper_parameters"].update(tokenizer="thatmodule.Zen"),
        "hyper_parameters.extra[1].class_path": lambda c: c["hyper_parameters"].update(
            extra=[1, {"class_path": "thatmodule.Zen"}]),
        "hyper_parameters._instantiator": lambda c: c["hyper_parameters"].update(_instantiator="thatmodule.Zen"),
        "datamodule_hyper_parameters._class_path": lambda c: c["datamodule_hyper_parameters"].update(
            _class_path="thatmodule.Zen"),
        "callbacks.X.class_path": lambda c: c.update(callbacks={"X": {"class_path": "thatmodule.Zen"}}),
        "genlip_module_class": lambda c: c.update(genlip_module_class="thatmodule.Zen"),
    }
    import copy

    for where, change in hostile.items():
        ckpt = copy.deepcopy(clean)
        change(ckpt)
        with pytest.raises(GenLIPUserError) as info:
            registry.vet_class_paths(ckpt, "h.ckpt")
        assert str(info.value).startswith(f"h.ckpt names class 'thatmodule.Zen' at {where}, which is not a "
                                          "registered genlip_lit class"), str(info.value)
        if "_instantiator" not in where:  # a class the user's own config names is trusted by name
            registry.vet_class_paths(ckpt, "h.ckpt", allow=("thatmodule.Zen",))
    path = tmp_path / "nested.ckpt"
    ckpt = copy.deepcopy(clean)
    hostile["hyper_parameters.tokenizer.class_path"](ckpt)
    torch.save(ckpt, path)
    with pytest.raises(GenLIPUserError, match="thatmodule.Zen"):
        read_checkpoint(str(path))  # every reader vets
    assert not marker.exists() and "thatmodule" not in __import__("sys").modules
