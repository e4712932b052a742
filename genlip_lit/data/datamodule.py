"""`GenLIPDataModule`: litdata shards -> `Batch`es of normalized images and prefix-LM caption tokens.

    data: {class_path: genlip_lit.data.datamodule.GenLIPDataModule, init_args: {synthetic: {num_train: 20000}}}
    data: {init_args: {data_dir: [data/recap, s3://bucket/cc12m], weights: [0.7, 0.3], cache_dir: /scratch}}

Data sits in one or more `data_dir`s (`train/` and optionally `val/`, as written by `genlip optimize`; local
paths or remote URLs such as `s3://...`, streamed through a local cache) or, with `synthetic`, is generated
once into a cache keyed by its parameters. Several dirs form a mixture (litdata `CombinedStreamingDataset`):
with `weights`, samples are drawn by weight and the epoch ends when the first dataset runs out; without, every
dataset is read to its end. The text format (tokenizer, prompt, max length), the patch size and the register
count are the model's: `connect(**module.data_settings())` hands them over (`genlip fit` and every command that
builds a data module call it); values given to `__init__` win.

Samples whose image fails to decode are dropped from their batch and counted in `Batch.num_skipped`; captions
cut to the model's length are counted in `Batch.num_truncated`, caption tokens the tokenizer cannot spell (its
unknown token; never for a byte-level BPE) in `Batch.num_unknown`. The train loader is a litdata
`StreamingDataLoader`, whose position Lightning stores in checkpoints: resuming continues mid-epoch exactly.
Under DDP, litdata gives every rank its own part of each epoch; by default (`drop_last` unset) the remainder
that would leave ranks with unequal step counts is dropped (the count is logged), `drop_last: false` keeps it.

Stage 2 (`resolution: native`): images keep their aspect ratio, resized so the patch grid holds
[`min_patches`, `max_patches`] patches (data/transforms.py: NativeResTransform), and each step's `batch_size`
samples are packed into rows of at most `max_tokens` tokens with per-sample segments and positions
(data/packing.py). Patch size and register count come from `connect`. Evaluation callbacks still get unpacked
batches, resized whole (no crop) to `image_size` (`eval_dataset`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import lightning as L
import litdata  # LITDATA_DISABLE_VERSION_CHECK is set in genlip_lit/__init__.py
import torch

from genlip_lit.data.batch import Batch
from genlip_lit.data.caption_coverage import check_caption_coverage
from genlip_lit.data.packing import PackingCollator
from genlip_lit.data.shards import optimize_synthetic, unfinished_dataset
from genlip_lit.data.streaming import (
    BatchCollator,
    GenLIPStreamingDataset,
    ResumableStreamingDataLoader,
    index_count,
    is_remote,
    is_split_dir,
    join_split,
    shutdown_workers,
    without_drop_last_warning,
)
from genlip_lit.data.synthetic import SceneConfig
from genlip_lit.data.tokenizer import CaptionEncoder
from genlip_lit.data.transforms import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MEAN,
    DEFAULT_STD,
    FixedResTransform,
    NativeResTransform,
    SquashTransform,
)
from genlip_lit.data.world import WorldConfig
from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import isfile as storage_isfile
from genlip_lit.storage.paths import join as storage_join
from genlip_lit.storage.paths import whole_chunks

log = logging.getLogger(__name__)
# re-exported: callers import the loader helpers from here (eval/data.py, tests, benchmarks)
__all__ = ["BatchCollator", "GenLIPDataModule", "default_cache_root", "shutdown_workers", "synthetic_params"]

SYNTHETIC_DEFAULTS: dict[str, Any] = {"num_train": 20_000, "num_val": 500, "seed": 0}
WORLDS = ("shapes", "rich")  # data.synthetic.world: data/synthetic.py's scenes or data/world.py's
_CACHE_FORMAT = 2  # bump when the stored sample layout changes, so old caches are not reused


def default_cache_root() -> str:
    """`$GENLIP_CACHE`, else `~/.cache/genlip_lit`."""
    return os.path.expanduser(os.environ.get("GENLIP_CACHE") or os.path.join("~", ".cache", "genlip_lit"))


def synthetic_params(synthetic: dict[str, Any]) -> dict[str, Any]:
    """Complete a `synthetic` dict with defaults; unknown keys are a user error. `world`: "shapes" (None: the
    scenes of data/synthetic.py, keys of SceneConfig) or "rich" (data/world.py, keys of WorldConfig)."""
    # `--data.init_args.synthetic.num_train 600` on the command line arrives as the string "600" (a dict has no
    # schema): read such values as YAML scalars, as a config file would have given them
    synthetic = {k: _yaml_scalar(v) for k, v in synthetic.items()}
    world = synthetic.get("world") or "shapes"
    if world not in WORLDS:
        raise GenLIPUserError(f"data.synthetic.world must be one of {list(WORLDS)}, got {world!r}")
    config_type = WorldConfig if world == "rich" else SceneConfig
    keys = tuple(f.name for f in dataclasses.fields(config_type))
    unknown = sorted(set(synthetic) - set(SYNTHETIC_DEFAULTS) - set(keys) - {"world"})
    if unknown:
        allowed = ["world", *sorted(SYNTHETIC_DEFAULTS), *keys]
        raise GenLIPUserError(f"unknown key(s) {unknown} in data.synthetic (world {world}); allowed: {allowed}")
    params = {**SYNTHETIC_DEFAULTS, **dataclasses.asdict(config_type()), **synthetic}
    for key, low in (("num_train", 1), ("num_val", 1), ("seed", 0)):
        if not isinstance(params[key], int) or params[key] < low:
            raise GenLIPUserError(f"data.synthetic.{key} must be an integer >= {low}, got {params[key]!r}")
    try:
        scene_config(params)
    except (TypeError, ValueError) as exc:
        raise GenLIPUserError(f"invalid data.synthetic: {exc}") from exc
    return params


def data_dir_problem(data_dir: str) -> str | None:
    """What is wrong with a local `data_dir` as a training set, in one line naming it (None: train shards are
    there). A URL must hold train/index.json. Checked by `genlip fit` before the model is built."""
    if is_remote(data_dir):
        index = storage_join(data_dir, "train", "index.json")
        if storage_isfile(index):
            return None
        return (f"data_dir {data_dir} has no train/ litdata shards (no {index}); write them with "
                f"`genlip optimize --input SRC --output {data_dir}`")
    d = os.path.abspath(os.path.expanduser(data_dir))
    if is_split_dir(os.path.join(d, "train")):
        return None
    unfinished = unfinished_dataset(d) if os.path.isdir(d) else None
    if unfinished:
        return f"data_dir {d!r} {unfinished}"
    what = "does not exist" if not os.path.isdir(d) else "has no train/ litdata shards"
    return (f"data_dir {d!r} {what}; create it with `genlip optimize --input SRC --output {data_dir}` "
            "(or `--source synthetic --num-samples N` for the embedded data)")


def _yaml_scalar(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if isinstance(parsed, (int, float, bool)) or parsed is None else value


def scene_config(params: dict[str, Any]) -> SceneConfig | WorldConfig:
    """The generator config of completed `synthetic_params`."""
    config_type = WorldConfig if params.get("world") == "rich" else SceneConfig
    return config_type(**{f.name: params[f.name] for f in dataclasses.fields(config_type)})


class GenLIPDataModule(L.LightningDataModule):
    """Image-caption data from litdata shards: fixed resolution (stage 1) or native and packed (stage 2).

    Batches may be empty (`len(batch) == 0`) when every sample in them failed to decode; modules skip those.

    Args (stage 2): resolution: "fixed" (resize + crop to image_size) or "native"; min_patches / max_patches:
        bounds on each image's patch grid; max_tokens: length of a packed row; pad_to_multiple: rows are padded
        to a multiple of this (up to max_tokens); patch_size: None = the model's (from `connect`).
    """

    def __init__(
        self,
        data_dir: str | list[str] | None = None,
        weights: list[float] | None = None,
        synthetic: dict | None = None,
        cache_dir: str | None = None,
        image_size: int = DEFAULT_IMAGE_SIZE,
        mean: tuple[float, float, float] = DEFAULT_MEAN,
        std: tuple[float, float, float] = DEFAULT_STD,
        batch_size: int = 32,
        val_batch_size: int | None = None,
        num_workers: int = 2,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool | None = None,
        max_cache_size: str = "100GB",
        resolution: str = "fixed",
        min_patches: int = 16,
        max_patches: int = 1024,
        max_tokens: int = 16384,
        pad_to_multiple: int = 8,
        patch_size: int | None = None,
        caption_encoder: CaptionEncoder | None = None,
    ) -> None:
        super().__init__()
        # image_size/mean/std land in checkpoints; `genlip caption` rebuilds the eval transform from them
        self.save_hyperparameters(ignore=["caption_encoder"])
        if data_dir is None and synthetic is None:
            raise GenLIPUserError("GenLIPDataModule needs data.data_dir (litdata shards) or data.synthetic")
        if data_dir is not None and synthetic is not None:
            raise GenLIPUserError("set only one of data.data_dir and data.synthetic")
        if image_size is not None and image_size < 1:
            raise GenLIPUserError(f"data.image_size must be >= 1, got {image_size}")
        self.synthetic = synthetic_params(dict(synthetic)) if synthetic is not None else None
        dirs = [data_dir] if isinstance(data_dir, str) else list(data_dir or [])
        if data_dir is not None and not dirs:
            raise GenLIPUserError("data.data_dir is an empty list")
        if weights is not None:
            if len(weights) != len(dirs):
                raise GenLIPUserError(f"data.weights has {len(weights)} values for {len(dirs)} data_dir entries")
            if any(not w > 0 for w in weights):
                raise GenLIPUserError(f"data.weights must all be positive, got {weights}")
        self.weights = [float(w) / sum(weights) for w in weights] if weights is not None else None
        for key, value, low in (("batch_size", batch_size, 1), ("val_batch_size", val_batch_size, 1),
                                ("num_workers", num_workers, 0)):
            if (value is not None or key == "batch_size") and (
                    isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise GenLIPUserError(f"data.{key} must be an integer >= {low}, got {value!r}")
        self.cache_dir = cache_dir
        self.image_size = image_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.max_cache_size = max_cache_size
        if resolution not in ("fixed", "native"):
            raise GenLIPUserError(f"data.resolution must be 'fixed' or 'native', got {resolution!r}")
        if not 1 <= min_patches <= max_patches:
            raise GenLIPUserError(f"need 1 <= data.min_patches <= data.max_patches, got {min_patches}, {max_patches}")
        if pad_to_multiple < 1:
            raise GenLIPUserError(f"data.pad_to_multiple must be >= 1, got {pad_to_multiple}")
        self.resolution = resolution
        self.min_patches, self.max_patches = int(min_patches), int(max_patches)
        self.max_tokens, self.pad_to_multiple = int(max_tokens), int(pad_to_multiple)
        self.patch_size = patch_size
        self.caption_encoder = caption_encoder
        self.num_registers = 0  # the model's (from `connect`): packed rows hold them before each sample's patches
        self.data_dirs = [self._resolve_local(d) for d in dirs] if dirs else [self._synthetic_dir()]
        self.data_dir = self.data_dirs[0]  # the synthetic cache, or the first (often only) dataset
        self.train_dataset: Any = None
        self.val_dataset: Any = None
        self._val_missing: list[str] = []
        self._val_batch: int | None = None  # val_batch_size, shrunk by setup() when ranks would get no batch

    # -- where the data lives --------------------------------------------------------------------
    @staticmethod
    def _resolve_local(data_dir: str) -> str:
        return data_dir if is_remote(data_dir) else os.path.abspath(os.path.expanduser(data_dir))

    def _synthetic_dir(self) -> str:
        assert self.synthetic is not None
        # unset optional scene fields stay out of the key: caches made before they existed remain valid
        params = {k: v for k, v in self.synthetic.items() if v is not None}
        key = json.dumps({"format": _CACHE_FORMAT, **params}, sort_keys=True)
        digest = hashlib.sha1(key.encode()).hexdigest()[:12]
        root = os.path.expanduser(self.cache_dir) if self.cache_dir else default_cache_root()
        return os.path.join(os.path.abspath(root), "synthetic", digest)

    def _complete(self) -> bool:
        return all(is_split_dir(os.path.join(self.data_dir, s)) for s in ("train", "val"))

    def _check_data_dir(self) -> None:
        """Every data_dir must hold train shards (val is optional): a local folder, or a URL whose train/index.json
        the store serves (a missing bucket, key, credentials or endpoint is one line naming the URL)."""
        if self.synthetic is not None:
            if not self._complete():
                raise GenLIPUserError(
                    f"synthetic data cache {self.data_dir!r} is missing or incomplete: prepare_data() generates "
                    "it (run through a Trainer, or call datamodule.prepare_data())"
                )
            return
        for d in self.data_dirs:
            problem = data_dir_problem(d)
            if problem:
                raise GenLIPUserError(problem)

    # -- the handshake with the model ------------------------------------------------------------
    def connect(
        self,
        caption_encoder: CaptionEncoder | None = None,
        patch_size: int | None = None,
        num_registers: int = 0,
    ) -> None:
        """Take the model's settings: its text format, patch size and register count (`EncoderModule.data_settings()`).

        Called once after model and data module are built (`genlip fit` does it in `GenLIPCLI`, commands that
        build a data module do it themselves). Values passed to `__init__` stay: they are the user's override.
        """
        if self.caption_encoder is None:
            self.caption_encoder = caption_encoder
        if self.patch_size is None:
            self.patch_size = patch_size
        self.num_registers = int(num_registers or 0)

    def prepare_data(self) -> None:
        """Generate the synthetic cache if missing (into a temp dir, then renamed: never half a dataset)."""
        if self.resolution == "native" and self.patch_size:
            self.packing_spec()  # a max_tokens that cannot work fails now, not after generating the data
        if self.synthetic is None or self._complete():
            self._check_data_dir()
            return
        p = self.synthetic
        parent = os.path.dirname(self.data_dir)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".tmp-{os.path.basename(self.data_dir)}-", dir=parent)
        try:
            scene = scene_config(p)
            log.info(
                "generating synthetic data (%d train, %d val) into %s",
                p["num_train"],
                p["num_val"],
                self.data_dir,
            )
            # Generation is CPU-bound PNG drawing/encoding: use up to two processes (the laptop/CI size).
            workers = max(1, min(2, os.cpu_count() or 1))
            optimize_synthetic(
                tmp, p["num_train"], p["num_val"], seed=p["seed"], scene=scene, overwrite=True, num_workers=workers
            )
            if os.path.isdir(self.data_dir):  # leftover without shards (made by hand or an old format)
                shutil.rmtree(self.data_dir)
            try:
                os.replace(tmp, self.data_dir)
            except OSError:
                if not self._complete():  # else a concurrent process finished first: keep its copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- datasets and loaders ----------------------------------------------------------------------
    def _encoder(self) -> CaptionEncoder:
        if self.caption_encoder is None:
            raise GenLIPUserError(
                "GenLIPDataModule needs a CaptionEncoder: pass caption_encoder=..., or call "
                "datamodule.connect(**module.data_settings()) with the model (genlip fit does)"
            )
        return self.caption_encoder

    def packing_spec(self) -> tuple[int, int]:
        """(patch size, registers per sample) for native-resolution packing: given, or the model's (`connect`)."""
        if self.patch_size is None:
            raise GenLIPUserError(
                "data.resolution: native needs the model's patch size: set data.patch_size or connect the data "
                "module to the model (datamodule.connect(**module.data_settings()); genlip fit does)"
            )
        registers = self.num_registers
        longest = self.max_patches + registers + self._encoder().max_len
        if longest > self.max_tokens:
            raise GenLIPUserError(
                f"data.max_tokens={self.max_tokens} cannot hold the longest sample: max_patches {self.max_patches} + "
                f"{registers} registers + max_text_len {self._encoder().max_len} = {longest} tokens"
            )
        return int(self.patch_size), registers

    def _input_dir(self, base: str, split: str) -> Any:
        """A local split path, or for a remote one a litdata `Dir` whose chunks are cached under `cache_dir`."""
        path = join_split(base, split)
        if not is_remote(base) or self.cache_dir is None:
            return path
        from litdata.streaming.resolver import Dir

        digest = hashlib.sha1(path.encode()).hexdigest()[:12]
        return Dir(path=os.path.join(os.path.expanduser(self.cache_dir), "streams", digest), url=path)

    def _transform(self, train: bool, for_eval: bool = False) -> Any:
        if self.resolution == "fixed":
            return FixedResTransform(self.image_size, self.mean, self.std, train=train)
        if for_eval:  # whole image at image_size: nothing cropped away (words, objects near the border)
            return SquashTransform(self.image_size, self.mean, self.std)
        patch, _ = self.packing_spec()
        return NativeResTransform(patch, self.min_patches, self.max_patches, self.mean, self.std)

    def eval_dataset(self, split: str, base: str | None = None) -> GenLIPStreamingDataset:
        """Unpacked, fixed-size (`image_size`) samples of `split` (by index; evaluations read them through
        `eval_batches`)."""
        return self._dataset(base or self.data_dirs[0], split, train=False, for_eval=True)

    def eval_batches(self, split: str, batch_size: int, order: Callable[[int], Iterable[int]]) -> Iterator[Batch]:
        """`eval_dataset(split)` of the first dataset read in `order(len(split))` (sample indices) and collated in
        batches of `batch_size`, in this process: an evaluation reads a seeded draw of the split
        (eval/labelled.py `reading_order`), not its stored order. Lazy: only the samples asked for are decoded."""
        dataset = whole_chunks(self.eval_dataset(split))  # by index: from object storage whole chunks, not ranges
        collate = BatchCollator(self._encoder(), self.image_size, self.mean, self.std)
        items: list[Any] = []
        for index in order(len(dataset)):
            items.append(dataset[int(index)])
            if len(items) == batch_size:
                yield collate(items)
                items = []
        if items:
            yield collate(items)

    def _dataset(self, base: str, split: str, train: bool, for_eval: bool = False) -> GenLIPStreamingDataset:
        transform = self._transform(train, for_eval)
        return GenLIPStreamingDataset(
            self._input_dir(base, split),
            transform=transform,
            caption_encoder=self._encoder(),
            shuffle=self.shuffle if train else False,
            seed=self.seed,
            drop_last=self.drop_last if train else False,  # evaluation sees every sample
            max_cache_size=self.max_cache_size,
        )

    def _has_val(self, base: str) -> bool:
        if is_remote(base):
            return storage_isfile(storage_join(base, "val", "index.json"))
        return is_split_dir(os.path.join(base, "val"))

    def setup(self, stage: str | None = None) -> None:
        self._check_data_dir()
        if stage in (None, "fit") and self.train_dataset is None:
            # a compact vocabulary must spell the corpus: refuse now, not a quiet <unk> (the rich world's words are
            # not the shapes world's: compact_corpus synthetic cannot spell them, compact_corpus world can)
            if self.synthetic is None or self.synthetic.get("world") == "rich":
                check_caption_coverage(self._encoder().tokenizer, self.data_dirs)
            parts = [self._dataset(d, "train", train=True) for d in self.data_dirs]
            for stream_id, part in enumerate(parts):
                part.stream_id = stream_id
            if len(parts) == 1:
                self.train_dataset = parts[0]
            else:  # weighted: draw by weight until one runs out; unweighted: read all of every dataset
                self.train_dataset = litdata.CombinedStreamingDataset(
                    parts, seed=self.seed, weights=self.weights, iterate_over_all=self.weights is None
                )
            self._log_ddp_remainder(parts)
        if self.val_dataset is None:
            with_val = [d for d in self.data_dirs if self._has_val(d)]
            self._val_missing = [d for d in self.data_dirs if d not in with_val]
            if self._val_missing:
                log.warning("no val/ split in %s: validation uses the other datasets only", self._val_missing)
            with without_drop_last_warning():  # evaluation keeps every sample; no collective per step there
                parts = [self._dataset(d, "val", train=False) for d in with_val]
            if len(parts) == 1:
                self.val_dataset = parts[0]
            elif parts:
                self.val_dataset = litdata.CombinedStreamingDataset(parts, seed=self.seed, iterate_over_all=True)
            self._val_batch = self._val_batch_for_ranks(with_val, parts)

    def _val_batch_for_ranks(self, dirs: list[str], parts: list[GenLIPStreamingDataset]) -> int:
        """The val batch size that gives every rank at least one batch of every val split.

        litdata hands each rank whole batches (the last rank also takes the remainder), so a split of N samples
        leaves a rank with nothing when N // batch < ranks, and Lightning then stops that rank at the start while
        the others wait on it. The batch shrinks to N // ranks (the samples are the same, in smaller batches);
        a split with fewer samples than ranks is refused, the same way on every rank.
        """
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if world == 1 or not parts:
            return self.val_batch_size
        sizes = {d: sum(end - start for start, end in p.region_of_interest) for d, p in zip(dirs, parts)}
        smallest = min(sizes, key=sizes.__getitem__)  # all ranks' samples of the smallest val split
        if sizes[smallest] < world:
            raise GenLIPUserError(
                f"the val split of {smallest} has {sizes[smallest]} samples for {world} ranks: every rank needs "
                "at least one; hold out more (genlip optimize --val-samples / --val-fraction) or use fewer ranks"
            )
        batch = min(self.val_batch_size, sizes[smallest] // world)
        if batch < self.val_batch_size:
            log.info("val batch %d -> %d: each of the %d ranks gets a batch of the %d val samples of %s",
                     self.val_batch_size, batch, world, sizes[smallest], smallest)
        return batch

    def _log_ddp_remainder(self, parts: list[GenLIPStreamingDataset]) -> None:
        """Name what `drop_last` costs under DDP, so no sample goes missing unannounced."""
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if world == 1 or not parts[0].drop_last:
            return
        for d, part in zip(self.data_dirs, parts):
            total = index_count(getattr(getattr(part, "input_dir", None), "path", None))
            if total is None:
                continue
            per_rank = part.get_len(self.num_workers or 1, self.batch_size)  # what the loader will use too
            if total > world * per_rank:
                log.warning(
                    "DDP with drop_last: %d of %d samples of %s are left out each epoch so all %d ranks run the "
                    "same number of steps (set data.drop_last: false to keep them)",
                    total - world * per_rank, total, d, world,
                )

    def _loader(self, dataset: Any, batch_size: int) -> litdata.StreamingDataLoader:
        if dataset is None:
            raise GenLIPUserError("GenLIPDataModule.setup() must run before asking for dataloaders")
        parts = getattr(dataset, "_datasets", [dataset])  # a CombinedStreamingDataset holds its parts
        if getattr(parts[0], "packed", False):
            patch, registers = self.packing_spec()
            collate: Any = PackingCollator(
                self._encoder(), patch, registers, self.max_tokens, self.pad_to_multiple, self.mean, self.std
            )
        else:
            collate = BatchCollator(self._encoder(), self.image_size, self.mean, self.std)
        return ResumableStreamingDataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Normalize uint8 pixels on the device they now sit on (cheap on a GPU, 4x less to transfer)."""
        return batch.normalized() if isinstance(batch, Batch) else batch

    def train_dataloader(self) -> litdata.StreamingDataLoader:
        # stateful: Lightning's fit loop saves/restores its state_dict in checkpoints (mid-epoch resume)
        return self._loader(self.train_dataset, self.batch_size)

    def val_dataloader(self) -> Any:
        if self.val_dataset is None and self._val_missing:
            return []  # no val split anywhere: Lightning skips validation
        return self._loader(self.val_dataset, self._val_batch or self.val_batch_size)

    def test_dataloader(self) -> Any:
        return self.val_dataloader()

    def predict_dataloader(self) -> Any:
        return self.val_dataloader()
