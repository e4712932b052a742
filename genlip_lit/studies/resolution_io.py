"""What goes into and comes out of `genlip eval-res`, with no model involved.

In: held-out scenes, the --resolutions parser, the OCR word parser, and the scenes' uint8 pixels at one
resolution grouped by size. Out: the table (markdown and csv), result.json and the metric-vs-resolution plot.
One cell's metrics are `resolution.py`'s; the command is `commands/eval_res.py`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from genlip_lit.data.synthetic import Scene, SceneConfig, class_names, generate_scene, written_word
from genlip_lit.data.transforms import NativeResTransform, SquashTransform
from genlip_lit.errors import GenLIPUserError

# Seed streams. A synthetic dataset of seed s stores train scenes from stream s and val scenes from
# s + 1_000_003 (data/shards.py, VAL_SEED_OFFSET; every shipped config uses s = 0), and `caption-eval` draws
# from 2_000_000_011 + k, k = 1..3 (studies/scene_captions.py). The evaluation scenes come from EVAL_SEED and the probe's
# training scenes from EVAL_SEED + PROBE_SEED_OFFSET: neither stream is used by any of those unless a dataset
# was built with a seed near 3e9.
EVAL_SEED = 3_000_000_019
PROBE_SEED_OFFSET = 500_009

NATIVE = "native"

# (column header, result key, format): "pct" as a percentage, "num2"/"num3" with 2/3 decimals
METRICS = [
    ("CIDEr-D", "cider", "num2"),
    ("BLEU-4", "bleu4", "num3"),
    ("OCR exact match", "ocr_em", "pct"),
    ("linear probe top-1", "linear_top1", "pct"),
    ("attentive probe top-1", "attentive_top1", "pct"),
    ("patch readout", "readout", "pct"),
    ("readout chance (permuted)", "readout_chance_permuted", "pct"),
]
# panels of resolution.png (the readout exists at native resolution only: a table column, no curve)
PLOTTED = [("cider", "caption CIDEr-D"), ("bleu4", "caption BLEU-4"), ("ocr_em", "OCR exact match"),
           ("linear_top1", "linear probe top-1"), ("attentive_top1", "attentive probe top-1")]


# ---------------------------------------------------------------------------------------------- resolutions
@dataclass(frozen=True)
class Resolution:
    """One evaluated input size: `side` pixels squared (squashed), or None for native aspect ratio."""

    side: int | None
    requested: str

    @property
    def label(self) -> str:
        return NATIVE if self.side is None else str(self.side)


def check_resolution(value: str) -> str:
    """The syntax check of one --resolutions entry: a positive integer or "native" (returned normalized)."""
    text = str(value).strip().lower()
    if text == NATIVE:
        return text
    if not text.isdigit() or int(text) < 1:
        raise GenLIPUserError(f"--resolutions: {value!r} is neither a positive integer (pixels) nor 'native'")
    return str(int(text))


def round_to_patch(side: int, patch_size: int) -> int:
    """The nearest multiple of `patch_size` (halves round up), never below one patch."""
    return max(patch_size, int(math.floor(side / patch_size + 0.5)) * patch_size)


def parse_resolutions(values: Sequence[str], patch_size: int) -> tuple[list[Resolution], list[str]]:
    """(resolutions in the given order without repeats, notes on rounding and dropped repeats)."""
    if not values:
        raise GenLIPUserError("--resolutions needs at least one entry (positive integers and/or 'native')")
    out: list[Resolution] = []
    notes: list[str] = []
    for value in values:
        text = check_resolution(value)
        side = None if text == NATIVE else round_to_patch(int(text), patch_size)
        if side is not None and side != int(text):
            notes.append(f"resolution {text} rounded to {side} (a multiple of the patch size {patch_size})")
        res = Resolution(side, text)
        if any(r.side == side for r in out):
            notes.append(f"resolution {text} repeats {res.label}: evaluated once")
            continue
        out.append(res)
    return out, notes


# ---------------------------------------------------------------------------------------------- OCR words
def ocr_exact_match(captions: Sequence[str], words: Sequence[str | None]) -> tuple[float, int]:
    """(share of scenes with a word whose caption names exactly that word, number of such scenes).

    Scenes without a word are not counted; a caption without the phrase counts as wrong. NaN when no scene
    has a word.
    """
    if len(captions) != len(words):
        raise ValueError(f"{len(captions)} captions for {len(words)} scenes")
    pairs = [(written_word(c), w.lower()) for c, w in zip(captions, words) if w is not None]
    if not pairs:
        return float("nan"), 0
    return sum(said == true for said, true in pairs) / len(pairs), len(pairs)


# ---------------------------------------------------------------------------------------------- scenes
def make_scenes(seed: int, count: int, config: SceneConfig) -> list[Scene]:
    return [generate_scene(seed, i, config) for i in range(count)]


@dataclass
class PreparedScenes:
    """Scenes at one resolution: uint8 [3, H, W] pixels, whether each kept its original pixel size, class labels."""

    pixels: list[torch.Tensor]
    kept_size: list[bool]
    labels: torch.Tensor

    @property
    def uniform(self) -> bool:
        """All inputs share one size (so patch features stack into one [N, M, D] tensor)."""
        return len({tuple(p.shape) for p in self.pixels}) <= 1

    def size_text(self) -> str:
        hs = [int(p.shape[1]) for p in self.pixels]
        ws = [int(p.shape[2]) for p in self.pixels]

        def span(v: list[int]) -> str:
            return str(v[0]) if min(v) == max(v) else f"{min(v)}-{max(v)}"

        return f"{span(ws)}x{span(hs)}"

    def mean_patches(self, patch_size: int) -> float:
        pixels = sum(int(p.shape[1]) * int(p.shape[2]) for p in self.pixels)
        return pixels / (patch_size**2 * max(len(self.pixels), 1))

    def mean_side(self) -> float:
        """The side of a square with the mean pixel count (where native inputs sit on a resolution axis)."""
        return math.sqrt(sum(int(p.shape[1]) * int(p.shape[2]) for p in self.pixels) / max(len(self.pixels), 1))

    def batches(
        self, batch_size: int, only: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], torch.Tensor]]:
        """(scene indices, uint8 [B, 3, H, W]) with every batch of one size (in first-seen order of sizes)."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i in range(len(self.pixels)) if only is None else only:
            groups.setdefault(tuple(self.pixels[i].shape), []).append(i)
        for indices in groups.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                yield chunk, torch.stack([self.pixels[i] for i in chunk])


def transform_for(
    res: Resolution, patch_size: int, min_patches: int, max_patches: int
) -> SquashTransform | NativeResTransform:
    """The uint8 transform of a resolution (normalization happens per checkpoint, with its own mean/std)."""
    if res.side is None:
        return NativeResTransform(patch_size, min_patches, max_patches)
    return SquashTransform(res.side)


def prepare(scenes: Sequence[Scene], transform: SquashTransform | NativeResTransform) -> PreparedScenes:
    pixels = [transform.to_uint8(s.image) for s in scenes]
    kept = [tuple(p.shape[1:]) == (s.image.size[1], s.image.size[0]) for p, s in zip(pixels, scenes)]
    return PreparedScenes(pixels, kept, torch.tensor([s.label for s in scenes]))

# ---------------------------------------------------------------------------------------------- reports
def write_outputs(rows: list[dict[str, Any]], meta: dict[str, Any], output: Path) -> str:
    """DIR/table.md, table.csv, result.json, resolution.png; returns the markdown table."""
    from PIL import Image

    from genlip_lit.console.tables import fmt, write_table
    from genlip_lit.eval.plots import panels_plot
    from genlip_lit.storage.paths import nan_to_null, write_json

    attentive = meta.get("attentive_epochs", 0) > 0  # without it the column would be n/a throughout
    columns = [c for c in METRICS if attentive or c[1] != "attentive_top1"]
    header = ["checkpoint", "resolution", "input (WxH)", "patches/image", *(h for h, _, _ in columns), "seconds"]
    shown, raw = [], []
    for r in rows:
        m = r["metrics"]
        shown.append([r["name"], r["resolution"], r["input"], f"{r['patches']:.0f}"]
                     + [fmt(m.get(key), kind) for _, key, kind in columns] + [f"{m['seconds']:.1f}"])
        raw.append([r["name"], r["resolution"], r["input"], round(r["patches"], 2)]
                   + ["" if nan_to_null(m.get(key)) is None else m[key] for _, key, _ in columns]
                   + [round(m["seconds"], 2)])
    notes = [f"- {r['name']} @ {r['resolution']}: {n}" for r in rows for n in r["metrics"]["notes"]]
    notes += [f"- {n}" for n in meta.get("notes", [])]
    footer = ["", f"{meta['num_scenes']} evaluation scenes (seed {meta['seed']}), probes fitted on "
              f"{meta['probe_train']} scenes (seed {meta['probe_seed']}); chance top-1 {100 / len(class_names()):.1f}%."]
    table = write_table(output, header, shown, raw, footer=footer + (["", "Notes:", *notes] if notes else []))
    write_json(output / "result.json", {**meta, "rows": rows})

    # Fig. 5 style: x = resolution (side in pixels; native inputs at the side of a square of equal area)
    panels = []
    for key, title in PLOTTED:
        if key == "attentive_top1" and not attentive:
            continue
        series: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            native = r["resolution"] == "native"
            name = f"{r['name']} (native)" if native else r["name"]
            series.setdefault(name, []).append((r["side"], r["metrics"].get(key, float("nan"))))
        panels.append((title, series))
    image = panels_plot(panels, "side (px; native: sqrt of mean pixels)", columns=2 if len(panels) == 4 else 3,
                        x_from_zero=False)
    Image.fromarray(image).save(output / "resolution.png")
    return table
