"""Noise a user cannot act on, said once or not at all: PIL's per-file warnings counted into one genlip line,
no "Total FLOPs: 0" in the model summary of a fit (issue 24)."""

from __future__ import annotations

import logging
import os
import warnings

from helpers import REPO
from PIL import Image

from genlip_lit.console import logs


def _palette_png_with_byte_transparency(path) -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 255, 0, 0] * 128)
    image.save(path, transparency=bytes([0, 128]))  # alpha per palette entry: PIL warns on convert("RGB")


def test_pil_warnings_become_one_counted_line(tmp_path, caplog) -> None:
    paths = [tmp_path / f"{i}.png" for i in range(3)]
    for path in paths:
        _palette_png_with_byte_transparency(path)
    with caplog.at_level(logging.WARNING, logger="genlip_lit"), warnings.catch_warnings(record=True) as passed:
        warnings.simplefilter("always")
        with logs.counted_library_warnings("PIL", "decoding images") as counts:
            for path in paths:
                Image.open(path).convert("RGB")
            warnings.warn("not PIL's", UserWarning, stacklevel=1)  # another library's warning passes through
    assert sum(counts.values()) == 3
    assert [str(w.message) for w in passed] == ["not PIL's"]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("PIL warned 3 time(s) while decoding images (most often 3x: "
                                                   "UserWarning: Palette images with Transparency")
    assert lines[0].endswith("; the files were read")


def test_no_zero_flops_line_in_the_model_summary(tmp_path) -> None:
    record = logging.LogRecord("lightning.pytorch.callbacks.model_summary", logging.INFO, "x", 1,
                               "\n  | Name | Type\n0 | m | GenLIP\n1.0 K     Total params\n0         Total Flops", (),
                               None)
    assert logs._NoZeroFlops().filter(record)
    assert record.getMessage() == "\n  | Name | Type\n0 | m | GenLIP\n1.0 K     Total params"
    counted = logging.LogRecord("x", logging.INFO, "x", 1, "\n2.6 M     Total Flops", (), None)
    logs._NoZeroFlops().filter(counted)
    assert counted.getMessage() == "\n2.6 M     Total Flops"  # a real count stays
    table = ("\n  | Name  | Type   | Params | Mode  | FLOPs\n------------------------------------------\n"
             "0 | model | GenLIP | 1.4 M  | train | 0    \n------------------------------------------\n"
             "1.4 M     Total params\n0         Total FLOPs")
    zeros = logging.LogRecord("x", logging.INFO, "x", 1, table, (), None)
    logs._NoZeroFlops().filter(zeros)  # Lightning 2.6's FLOPs column of zeros goes with the total
    assert zeros.getMessage() == ("\n  | Name  | Type   | Params | Mode\n" + "-" * 35 + "\n"
                                  "0 | model | GenLIP | 1.4 M  | train\n" + "-" * 35 + "\n1.4 M     Total params")
    counted = logging.LogRecord("x", logging.INFO, "x", 1, table.replace("train | 0 ", "train | 9 "), (), None)
    logs._NoZeroFlops().filter(counted)
    assert "| FLOPs" in counted.getMessage()  # a counted column stays

    from helpers import tiny_fit_args
    from lightning.pytorch.callbacks import ModelSummary, RichModelSummary

    from genlip_lit.commands.fit import GenLIPCLI
    from genlip_lit.modules.base import EncoderModule

    os.chdir(REPO)
    cli = GenLIPCLI(model_class=EncoderModule, subclass_mode_model=True, datamodule_class=None, run=False,
                    args=tiny_fit_args(tmp_path)[1:], auto_configure_optimizers=False)
    summaries = [c for c in cli.trainer.callbacks if isinstance(c, ModelSummary)]
    # the plain summary goes through the logger (and its filter); the rich one prints "Total FLOPs: 0" directly
    assert len(summaries) == 1 and not isinstance(summaries[0], RichModelSummary)
