"""A small photo-like corpus written in every layout `genlip optimize` reads, for trying it out, tests and
benchmarks (nothing is downloaded):

    python -m genlip_lit.ingest.demo_corpus --output /tmp/demo --num-images 200 --layout all

Images are synthetic scenes upscaled to varied sizes and aspect ratios with sensor-like noise, stored mostly
as JPEG (some PNG and WebP), with a caption, an integer label and an img2dataset-style `.json` sidecar.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from genlip_lit.data.synthetic import SceneConfig, generate_scene

LAYOUTS = ("webdataset", "folder", "parquet", "manifest")
_SCENE = SceneConfig(image_size=64, patch_size=8, min_objects=1, max_objects=3)


@dataclass(frozen=True)
class DemoSample:
    key: str
    image: bytes
    ext: str
    caption: str
    label: int


def demo_samples(num_images: int, seed: int = 0, min_side: int = 96, max_side: int = 320) -> Iterator[DemoSample]:
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        scene = generate_scene(seed, i, _SCENE)
        w, h = (int(v) for v in rng.integers(min_side, max_side + 1, size=2))
        img = scene.image.resize((w, h), resample=Image.Resampling.BILINEAR)
        noisy = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, size=(h, w, 3), dtype=np.int16)
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
        ext = "png" if i % 10 == 3 else "webp" if i % 10 == 7 else "jpg"
        buffer = io.BytesIO()
        img.save(buffer, format={"jpg": "JPEG", "png": "PNG", "webp": "WEBP"}[ext], quality=90)
        yield DemoSample(f"{i:09d}", buffer.getvalue(), ext, scene.caption, int(scene.label))


def _meta(s: DemoSample) -> bytes:
    return json.dumps({"key": s.key, "caption": s.caption, "status": "success"}).encode()


def write_webdataset(samples: list[DemoSample], out: str, per_shard: int = 100) -> list[str]:
    os.makedirs(out, exist_ok=True)
    paths = []
    for shard, start in enumerate(range(0, len(samples), per_shard)):
        path = os.path.join(out, f"{shard:05d}.tar")
        with tarfile.open(path, "w") as tar:
            for s in samples[start : start + per_shard]:
                for ext, data in ((s.ext, s.image), ("txt", s.caption.encode()), ("json", _meta(s)),
                                  ("cls", str(s.label).encode())):
                    info = tarfile.TarInfo(f"{s.key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def write_folder(samples: list[DemoSample], out: str, per_dir: int = 100) -> str:
    for i, s in enumerate(samples):
        sub = os.path.join(out, f"{i // per_dir:05d}")
        os.makedirs(sub, exist_ok=True)
        stem = os.path.join(sub, s.key)
        with open(f"{stem}.{s.ext}", "wb") as fh:
            fh.write(s.image)
        with open(f"{stem}.txt", "w", encoding="utf-8") as fh:
            fh.write(s.caption)
        with open(f"{stem}.json", "wb") as fh:
            fh.write(_meta(s))
        with open(f"{stem}.cls", "w", encoding="utf-8") as fh:
            fh.write(str(s.label))
    return out


def write_parquet(samples: list[DemoSample], out: str, rows_per_group: int = 64) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out, exist_ok=True)
    table = pa.table({
        "key": [s.key for s in samples],
        # the {bytes, path} struct that datasets libraries write for an Image feature
        "image": [{"bytes": s.image, "path": f"{s.key}.{s.ext}"} for s in samples],
        "caption": [s.caption for s in samples],
        "org_caption": [f"photo {s.key}" for s in samples],
        "label": [s.label for s in samples],
    })
    path = os.path.join(out, "part-00000.parquet")
    pq.write_table(table, path, row_group_size=rows_per_group)
    return path


def write_manifest(samples: list[DemoSample], out: str) -> str:
    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)
    path = os.path.join(out, "manifest.jsonl")
    with open(path, "w", encoding="utf-8") as fh:
        for s in samples:
            name = f"{s.key}.{s.ext}"
            with open(os.path.join(images, name), "wb") as img:
                img.write(s.image)
            fh.write(json.dumps({"image": f"images/{name}", "caption": s.caption, "label": s.label}) + "\n")
    return path


WRITERS = {"webdataset": write_webdataset, "folder": write_folder, "parquet": write_parquet,
           "manifest": write_manifest}


def write_demo_corpus(output: str, num_images: int = 200, layouts: tuple[str, ...] = LAYOUTS, seed: int = 0) -> dict:
    """Write the same images in each layout under `output/<layout>/`; returns {layout: path to pass as --input}."""
    samples = list(demo_samples(num_images, seed=seed))
    written = {}
    for layout in layouts:
        result = WRITERS[layout](samples, os.path.join(output, layout))
        written[layout] = os.path.join(output, layout) if isinstance(result, list) else result
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    p.add_argument("--output", required=True)
    p.add_argument("--num-images", type=int, default=200)
    p.add_argument("--layout", default="all", choices=["all", *LAYOUTS])
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    layouts = LAYOUTS if args.layout == "all" else (args.layout,)
    for layout, path in write_demo_corpus(args.output, args.num_images, layouts, args.seed).items():
        print(f"{layout}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
