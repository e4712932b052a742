"""`load_vision_encoder` refuses edited or damaged exports: config fields are checked, the weights' shapes are
compared (from the safetensors header) before anything is allocated, and the sha256 of the weights file and of
the architecture recorded at export time must match."""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch
from helpers import one_line_refusal, tiny_objective, write_checkpoint
from safetensors.torch import load_file, save_file

from genlip_lit.encoders.export import export_vision_encoder, file_sha256, load_vision_encoder
from genlip_lit.errors import GenLIPUserError


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory) -> str:
    """An untrained GenLIP (2 blocks of width 32) as `genlip fit` writes it; read only."""
    module = tiny_objective("genlip", {"depth": 2, "width": 32, "ffn_hidden": 64}, seed=0)
    return write_checkpoint(module, tmp_path_factory.mktemp("good") / "m.ckpt")


@pytest.fixture(scope="module")
def export_dir(good_ckpt, tmp_path_factory) -> str:
    return export_vision_encoder(good_ckpt, str(tmp_path_factory.mktemp("export") / "enc"))


def _copy(src: str, dst, edit=None, weights=None) -> str:
    os.makedirs(dst, exist_ok=True)
    config = json.load(open(os.path.join(src, "config.json")))
    if edit:
        edit(config)
    json.dump(config, open(os.path.join(dst, "config.json"), "w"))
    state = load_file(os.path.join(src, "model.safetensors"))
    save_file(weights(state) if weights else state, os.path.join(dst, "model.safetensors"))
    return str(dst)


def _refused(path: str, pattern: str) -> None:
    with pytest.raises(GenLIPUserError, match=pattern) as info:
        load_vision_encoder(path)
    assert "\n" not in str(info.value)


def test_export_records_both_digests_and_loads(export_dir) -> None:
    config = json.load(open(os.path.join(export_dir, "config.json")))
    assert config["sha256"]["model.safetensors"] == file_sha256(os.path.join(export_dir, "model.safetensors"))
    encoder = load_vision_encoder(export_dir)
    assert encoder(torch.randn(1, 3, 16, 16)).shape == (1, 4, 32)


@pytest.mark.parametrize("key, value, pattern", [
    ("norm_eps", -1, "norm_eps must be a finite number > 0"),
    ("norm_eps", 0, "norm_eps must be a finite number > 0"),
    ("attn_mode", "sideways", r"attn_mode must be one of \['prefix', 'causal'\]"),
    ("ffn_type", "subprocess.Popen", "ffn_type must be one of"),
    ("depth", "2", "depth must be a positive integer"),
    ("drop_path", 1.5, "drop_path must be a number in"),
])
def test_bad_config_fields_are_named(export_dir, tmp_path, key, value, pattern) -> None:
    _refused(_copy(export_dir, tmp_path / "e", lambda c: c["architecture"].update({key: value})), pattern)


def test_edited_architecture_or_weights_are_refused(export_dir, tmp_path) -> None:
    # a valid mode that silently changes the features: the recorded architecture digest catches it
    _refused(_copy(export_dir, tmp_path / "causal", lambda c: c["architecture"].update(attn_mode="causal")),
             "architecture does not match the one exported")
    flipped = _copy(export_dir, tmp_path / "flipped")
    weights = os.path.join(flipped, "model.safetensors")
    data = bytearray(open(weights, "rb").read())
    for i in range(len(data) - 200, len(data) - 136):  # 64 bytes inside the last tensor's data
        data[i] ^= 0xFF
    open(weights, "wb").write(bytes(data))
    _refused(flipped, "does not match the sha256 recorded")

    def nan_weights(state):
        state["norm.weight"] = torch.full_like(state["norm.weight"], float("nan"))
        return state

    def rehash(path: str) -> None:  # a NaN export with consistent digests (written from a diverged run)
        config = json.load(open(os.path.join(path, "config.json")))
        config["sha256"]["model.safetensors"] = file_sha256(os.path.join(path, "model.safetensors"))
        json.dump(config, open(os.path.join(path, "config.json"), "w"))

    nan = _copy(export_dir, tmp_path / "nan", weights=nan_weights)
    rehash(nan)
    _refused(nan, "weight 'norm.weight' holds NaN or inf")


def test_sizes_are_checked_against_the_header_before_allocation(export_dir, tmp_path) -> None:
    # 2^20 wide: the tower would need terabytes; refused from the safetensors header, nothing allocated
    _refused(_copy(export_dir, tmp_path / "wide", lambda c: c["architecture"].update(width=1 << 20, num_heads=1 << 14)),
             "does not match .*by the config")
    _refused(_copy(export_dir, tmp_path / "deep", lambda c: c["architecture"].update(depth=10**9)),
             "2 blocks stored, depth 1000000000 described")
    _refused(_copy(export_dir, tmp_path / "vocab", lambda c: c["architecture"].update(vocab_size=10**12)),
             "architecture does not match")  # text-only fields allocate nothing either way
    broken = _copy(export_dir, tmp_path / "header")
    with open(os.path.join(broken, "model.safetensors"), "r+b") as fh:
        fh.write((10**15).to_bytes(8, "little"))
    _refused(broken, "not a safetensors file")
    big = _copy(export_dir, tmp_path / "bigconfig", lambda c: c.update(padding="x" * (2 << 20)))
    _refused(big, "larger than")


def test_class_names_in_an_export_config_are_never_imported(export_dir, tmp_path, caplog) -> None:
    marker = tmp_path / "ran"
    extra = {"class_path": "subprocess.Popen", "init_args": {"args": ["touch", str(marker)]}}
    path = _copy(export_dir, tmp_path / "named", lambda c: c.update(extra))
    assert load_vision_encoder(path) is not None and not marker.exists()  # ignored: the loader imports nothing
    legacy = _copy(export_dir, tmp_path / "legacy", lambda c: c.pop("sha256"))
    with caplog.at_level(logging.WARNING):
        load_vision_encoder(legacy)
    assert "records no sha256" in caplog.text


def test_export_output_is_whole_or_absent_and_never_over_a_users_files(good_ckpt, tmp_path, capsys) -> None:
    """A file cannot switch off the weight checks (an 'already verified' key), a refused export leaves nothing,
    a folder the user filled is refused without --overwrite, and files get the usual permissions (not 0600)."""
    from genlip_lit.checkpoints.integrity import SHA_KEY, VERIFIED_KEY, weights_sha256
    from genlip_lit.cli import main

    good = good_ckpt
    ckpt = torch.load(good, weights_only=True)
    name = next(iter(ckpt["state_dict"]))
    nan = {**ckpt, VERIFIED_KEY: True, "state_dict": {**ckpt["state_dict"], name: ckpt["state_dict"][name] * float("nan")}}
    nan[SHA_KEY] = weights_sha256(nan["state_dict"])
    torch.save(nan, tmp_path / "nan.ckpt")
    stale = {**nan, "state_dict": {**ckpt["state_dict"], name: ckpt["state_dict"][name] + 1}}
    torch.save(stale, tmp_path / "stale.ckpt")
    out = tmp_path / "enc"
    assert "holds NaN or inf" in one_line_refusal(["export", "--ckpt", str(tmp_path / "nan.ckpt"), "--output", str(out)],
                                              capsys)
    assert "do not match the sha256" in one_line_refusal(["export", "--ckpt", str(tmp_path / "stale.ckpt"),
                                                      "--output", str(out)], capsys)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".enc")]
    assert main(["export", "--ckpt", good, "--output", str(out)]) == 0
    mask = os.umask(0)
    os.umask(mask)
    for file in ("model.safetensors", "config.json", "README.md", "timm/model.safetensors"):
        assert os.stat(out / file).st_mode & 0o777 == 0o666 & ~mask, file
    before = {f: (out / f).read_bytes() for f in ("model.safetensors", "config.json")}
    one_line_refusal(["export", "--ckpt", str(tmp_path / "nan.ckpt"), "--output", str(out)], capsys)
    assert {f: (out / f).read_bytes() for f in before} == before  # the earlier export stays whole
    assert main(["export", "--ckpt", good, "--output", str(out)]) == 0  # its own: rewritten without asking
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    line = one_line_refusal(["export", "--ckpt", good, "--output", str(mine)], capsys)
    assert f"--output {mine}: the directory is not empty (README.md)" in line and "--overwrite" in line
    assert (mine / "README.md").read_text() == "my notes"
    (mine / "keep.txt").write_text("kept")
    assert main(["export", "--ckpt", good, "--output", str(mine), "--overwrite"]) == 0
    assert (mine / "keep.txt").read_text() == "kept" and (mine / "README.md").read_text() != "my notes"
    line = one_line_refusal(["export", "--ckpt", good, "--output", str(mine / "keep.txt")], capsys)
    assert line == f"genlip: error: --output {mine / 'keep.txt'}: is a file, not a directory: name a directory " \
                   "(new or empty)"
