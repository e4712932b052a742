"""Evaluation images, tables and text to whatever loggers a run has: one path for all of them.

    log_result(trainer.loggers, step, scalars, images, texts, tables)

Scalars go through `log_metrics`, which every Lightning logger has. The rest is logger-specific:

| logger | images | text (markdown) | tables |
|---|---|---|---|
| TensorBoard | `add_image` | `add_text` | (as text) |
| W&B (optional) | `log_image` | - | `log_table` |
| MLflow (optional) | `log_image` (artifact) | `log_text` (artifact) | (as text) |
| CSV, and any other logger with a `log_dir` | PNG files | .md files | .csv files |

Files go to `LOG_DIR/media/` named by tag and step (`readout_top_word_per_patch_step1350.png`), so a CSV run keeps
its figures beside `metrics.csv`. W&B and MLflow are optional extras (`pip install 'genlip_lit[wandb]'`,
`[mlflow]`): they are recognised by class name, never imported here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def _slug(tag: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", tag)


def _kind(logger: Any) -> str:
    names = {cls.__name__ for cls in type(logger).__mro__}
    for kind in ("TensorBoardLogger", "WandbLogger", "MLFlowLogger"):
        if kind in names:
            return kind
    return "files"


def media_dir(logger: Any) -> str | None:
    """Where a file-based logger keeps figures: LOG_DIR/media (None for a logger without a directory)."""
    root = getattr(logger, "log_dir", None) or getattr(logger, "save_dir", None)
    return os.path.join(str(root), "media") if root else None


def _write_files(directory: str, step: int, images: dict, texts: dict, tables: dict) -> None:
    from PIL import Image

    from genlip_lit.console.tables import csv_text

    os.makedirs(directory, exist_ok=True)
    for tag, image in images.items():
        Image.fromarray(image).save(os.path.join(directory, f"{_slug(tag)}_step{step}.png"))
    for tag, text in texts.items():
        with open(os.path.join(directory, f"{_slug(tag)}_step{step}.md"), "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    for tag, (header, rows) in tables.items():
        with open(os.path.join(directory, f"{_slug(tag)}_step{step}.csv"), "w", encoding="utf-8") as fh:
            fh.write(csv_text(header, rows))


def log_result(
    loggers: Iterable[Any],
    step: int,
    scalars: dict[str, float],
    images: dict[str, np.ndarray] | None = None,
    texts: dict[str, str] | None = None,
    tables: dict[str, tuple[list[str], list[list[Any]]]] | None = None,
) -> None:
    """Log one evaluation's outputs at `step` to every logger, each in the form it takes (see the table above)."""
    images, texts, tables = images or {}, texts or {}, tables or {}
    for logger in loggers:
        logger.log_metrics(scalars, step=step)
        kind = _kind(logger)
        try:
            if kind == "TensorBoardLogger":
                for tag, image in images.items():
                    logger.experiment.add_image(tag, image, step, dataformats="HWC")
                for tag, text in texts.items():
                    logger.experiment.add_text(tag, text, step)
            elif kind == "WandbLogger":
                for tag, image in images.items():
                    logger.log_image(key=tag, images=[image], step=step)
                for tag, (header, rows) in tables.items():
                    logger.log_table(key=tag, columns=list(header), data=[list(map(str, r)) for r in rows], step=step)
            elif kind == "MLFlowLogger":
                run_id, client = logger.run_id, logger.experiment
                for tag, image in images.items():
                    client.log_image(run_id, image, f"media/{_slug(tag)}_step{step}.png")
                for tag, text in texts.items():
                    client.log_text(run_id, text, f"media/{_slug(tag)}_step{step}.md")
            else:
                directory = media_dir(logger)
                if directory is not None:
                    _write_files(directory, step, images, texts, tables)
        except Exception as err:  # a logger's media API must not end a run whose metrics are logged
            log.warning("could not log evaluation media to %s: %s", type(logger).__name__, err)
