"""Import formats as a registry (genlip_lit/convert/formats.py): every registered format through the same checks,
and a format added by one file that `genlip import` finds, detects and converts with nothing else changed.

Each registered format NAME brings tests/fixtures/NAME/tiny (config + weights written by that implementation)
and a toy tokenizer for it (tests/toy_tokenizers.py); the checks: the fixture is detected as NAME and claimed
by no other format; `genlip import` of it gives a checkpoint whose weights, text settings and preprocessing
are the format's own, and whose exported vision encoder computes what the format's converted model computes;
`--format NAME` on another format's fixture is refused in one line, writing nothing.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import re
from pathlib import Path

import pytest
import torch
from helpers import one_line_refusal
from safetensors.torch import load_file, save_file
from toy_tokenizers import FIXTURES, write_toy_tokenizer

from genlip_lit.cli import main
from genlip_lit.convert import formats as registry
from genlip_lit.convert.common import load_state, read_json
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models import GenLIP

FORMATS = registry.formats()  # at collection: the built-in formats, found by importing convert/'s modules


def _fixture(name: str) -> tuple[Path, dict]:
    directory = Path(FIXTURES) / name / "tiny"
    assert directory.is_dir(), f"import format {name!r} has no fixture: add tests/fixtures/{name}/tiny"
    return directory, read_json(directory / registry.config_names(FORMATS[name])[0])


def test_the_built_in_formats_are_found_by_importing_the_package(monkeypatch):
    """No list of formats anywhere: with none imported yet, `formats()` imports convert/'s modules and each
    format module registers itself, in file-name order (the order detection tries and --help lists them)."""
    import sys

    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_discovered", False)
    for module in {type(fmt).__module__ for fmt in FORMATS.values()}:
        package, _, leaf = module.rpartition(".")
        monkeypatch.setattr(sys.modules[package], leaf, sys.modules[module])  # the re-import rebinds it: restore
        monkeypatch.delitem(sys.modules, module)
    found = registry.formats()
    assert list(found) == list(FORMATS) and {"official", "open_clip"} <= set(found)
    modules = [type(fmt).__module__ for fmt in found.values()]
    assert modules == sorted(modules) and all(m.startswith("genlip_lit.convert.") for m in modules)
    for fmt in found.values():
        assert isinstance(fmt, registry.ImportFormat) and fmt.description and fmt.detected_by and fmt.tokenizer_hint


@pytest.mark.parametrize("name", list(FORMATS))
def test_each_fixture_is_detected_as_its_format_and_claimed_by_no_other(name):
    directory, config = _fixture(name)
    assert registry.detect_format(config, directory, "config.json") is FORMATS[name]
    assert [n for n, fmt in FORMATS.items() if fmt.detect(config, directory)] == [name]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FORMATS))
def test_import_then_export_computes_what_the_format_converts(name, tmp_path):
    from genlip_lit.checkpoints.loading import load_checkpoint
    from genlip_lit.encoders.export import export_vision_encoder, load_vision_encoder

    fmt = FORMATS[name]
    directory, config = _fixture(name)
    toy = write_toy_tokenizer(name, str(tmp_path / "toy.json"))
    assert main(["import", str(directory), "--output", str(tmp_path / "imp"), "--tokenizer", toy]) == 0
    ckpt = str(tmp_path / "imp" / "genlip.ckpt")
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert raw["genlip_import"]["format"] == name
    assert raw["datamodule_hyper_parameters"] == fmt.preprocessing(config, directory)
    hp = raw["hyper_parameters"]
    assert {k: hp[k] for k in fmt.text(config)} == fmt.text(config)

    cfg = fmt.model_config(config, "config.json")
    reference = GenLIP(cfg)
    reference.load_state_dict(fmt.convert(load_state(directory, preferred=fmt.weights_names)[0], cfg, "fixture"))
    module, data = load_checkpoint(ckpt)
    for key, value in reference.state_dict().items():
        assert torch.equal(module.model.state_dict()[key], value), key
    encoder = load_vision_encoder(export_vision_encoder(ckpt, str(tmp_path / "enc"), (module, data)))
    assert encoder.preprocessing["image_size"] == data["image_size"]
    pixels = torch.randn(2, 3, 4 * cfg.patch_size, 3 * cfg.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(encoder(pixels), reference.eval().encode_image(pixels), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,other", list(itertools.permutations(FORMATS, 2)))
def test_a_format_refuses_another_formats_checkpoint(name, other, tmp_path, capsys, monkeypatch):
    """--format NAME on OTHER's fixture: one line naming the config and the right --format, before a weight is
    read; without detection (the config's marker gone) NAME's own reading of the config refuses it."""
    from genlip_lit.convert import common

    directory, config = _fixture(other)
    assert not FORMATS[name].detect(config, directory)
    toy = write_toy_tokenizer(other, str(tmp_path / "toy.json"))
    out = tmp_path / "out"

    def never(*args, **kwargs):
        raise AssertionError("the weights were read before the refusal")

    monkeypatch.setattr(common, "load_state", never)
    argv = ["import", str(directory), "--output", str(out), "--format", name, "--tokenizer", toy]
    line = one_line_refusal(argv, capsys)
    assert f"{directory}" in line and f"which --format {name} does not read: pass --format {other}" in line
    with pytest.raises(GenLIPUserError, match="config key"):  # each format's reading is strict on its own
        FORMATS[name].model_config(config, "config.json")
    assert not out.exists()


def test_no_format_is_named_outside_its_own_file():
    """The command and the shared conversion code know formats only through the registry."""
    from genlip_lit.commands import import_checkpoint
    from genlip_lit.convert import common

    for module in (import_checkpoint, common, registry):
        source = Path(module.__file__).read_text()
        for name in FORMATS:
            assert not re.search(rf"\b{re.escape(name)}\b", source), (name, module.__name__)


def test_registration_refuses_what_is_not_a_format():
    class Nameless(FORMATS["official"].__class__):
        name = "not a name"

    with pytest.raises(TypeError, match="must be an identifier"):
        registry.register_format(Nameless)
    with pytest.raises(TypeError, match="not an ImportFormat subclass"):
        registry.register_format(dict)

    class Impostor(FORMATS["official"].__class__):
        pass  # inherits name "official": would silently replace the authors' format

    with pytest.raises(TypeError, match="'official' is registered already"):
        registry.register_format(Impostor)
    assert registry.formats() == FORMATS


def test_a_format_added_by_one_file_imports_through_genlip_import(tmp_path, monkeypatch, capsys):
    """tests/convert/toy_import_format.py (the official layout, trunk renamed) registers itself: `genlip import`
    then lists it, detects its checkpoint and converts it to the official import's weights, number for number."""
    official_dir = Path(FIXTURES) / "official" / "tiny"
    src = tmp_path / "src"
    src.mkdir()
    state = load_file(str(official_dir / "model.safetensors"))
    save_file({k.replace("visual.layers.", "encoder.block_", 1) if k.startswith("visual.layers.") else k: v
               for k, v in state.items()}, str(src / "model.safetensors"))
    config = read_json(official_dir / "config.json")
    (src / "config.json").write_text(json.dumps({**config, "model_type": "genlip_renamed",
                                                 "architectures": ["RenamedGenLIP"]}))
    write_toy_tokenizer("official", str(src / "tokenizer.json"))
    line = one_line_refusal(["import", str(src), "--output", str(tmp_path / "out")], capsys)
    assert "is neither an official GenLIP config" in line and "pass --format" in line  # unknown before the file

    monkeypatch.setattr(registry, "_REGISTRY", dict(FORMATS))  # the registration lasts for this test only
    spec = importlib.util.spec_from_file_location("toy_import_format",
                                                  os.path.join(os.path.dirname(__file__), "toy_import_format.py"))
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    assert list(registry.formats()) == ["official", "open_clip", "renamed"]
    with pytest.raises(SystemExit):
        main(["import", "--help"])
    assert "'renamed'" in capsys.readouterr().out  # a --format choice

    both = {**config, "model_type": "genlip_renamed"}  # architectures still says GenLIPModel: official's too
    (tmp_path / "both").mkdir()
    (tmp_path / "both" / "config.json").write_text(json.dumps(both))
    with pytest.raises(GenLIPUserError, match=r"matches several import formats \(official, renamed\): pass --format"):
        registry.detect_format(both, tmp_path / "both", "both/config.json")
    line = one_line_refusal(["import", str(src), "--output", str(tmp_path / "out"), "--format", "official"], capsys)
    assert "is a renamed GenLIP config (model_type 'genlip_renamed'), which --format official does not read" in line

    assert main(["import", str(src), "--output", str(tmp_path / "out")]) == 0
    raw = torch.load(tmp_path / "out" / "genlip.ckpt", map_location="cpu", weights_only=True)
    assert raw["genlip_import"]["format"] == "renamed"
    assert raw["hyper_parameters"]["text_template"] == "official"
    official = FORMATS["official"]
    cfg = official.model_config(config, "config.json")
    want = official.convert(state, cfg, "fixture")
    assert {k[len("model."):] for k in raw["state_dict"] if k.startswith("model.")} == set(want)
    for key, value in want.items():
        assert torch.equal(raw["state_dict"][f"model.{key}"], value), key


def test_a_format_giving_other_text_settings_is_named_before_any_work(tmp_path, monkeypatch):
    """ImportFormat.text() must give exactly the module's text settings (a plug-in's slip, caught early)."""
    official = type(FORMATS["official"])

    class Forgetful(official):
        name = "forgetful"

        def text(self, config):
            return {"prompt": None, "text_template": "genlip"}

    monkeypatch.setattr(registry, "_REGISTRY", dict(FORMATS))
    registry.register_format(Forgetful)
    src = Path(FIXTURES) / "official" / "tiny"
    toy = write_toy_tokenizer("official", str(tmp_path / "toy.json"))
    with pytest.raises(TypeError, match=r"Forgetful.text\(\) must give exactly \('prompt', 'text_template', "
                                        r"'max_text_len', 'caption_max_new_tokens'\), got \('prompt', 'text_template'\)"):
        main(["import", str(src), "--output", str(tmp_path / "out"), "--format", "forgetful", "--tokenizer", toy])
    assert not (tmp_path / "out").exists()
