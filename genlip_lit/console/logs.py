"""The `genlip_lit` logger: one handler, `genlip: message` lines, `-v`/`-q`, and library noise muted at the source.

Every genlip_lit module logs through its own child logger; `genlip_lit.cli.main` calls `configure()` once:

    import logging
    log = logging.getLogger(__name__)         # genlip_lit.<module>: a child of the `genlip_lit` logger
    log.info("wrote %d shards to %s", n, out)  # commands show INFO by default; `-q` hides it
    log.debug("chunk %s took %.1f s", ...)     # shown with `-v`
    log.warning("skipped %d images", k)        # always shown (also with -q)

All records go to stderr (looked up at each write, so a rich progress display or pytest's capture sees them),
keeping stdout for a command's results (`genlip caption ... > captions.tsv`). Format: `genlip: message`,
`genlip: warning: message`, `genlip: error: message`; with `-v` the logger name is added.

Library users who never call `configure()` keep Python's defaults (warnings and errors only). Verbosity:
0 = INFO (default), 1 = DEBUG (`-v`, also prints tracebacks of user errors), -1 = WARNING (`-q`), -2 = ERROR.

`quiet_library_noise()` mutes what a user cannot act on (jsonargparse deprecation notices, Lightning's
"💡 Tip" adverts and "no GPU/TPU here" lines, litdata's version check); it never mutes warnings about the
user's run (data, checkpoints, shapes, NaNs).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator

ROOT = "genlip_lit"
PREFIX = "genlip"
_HANDLER_NAME = "genlip_lit.stderr"

# Lightning's info lines and warnings that advertise a product or state a fact that needs no action.
_LIGHTNING_NOISE = (
    "💡 Tip",  # litlogger / LitModelCheckpoint adverts
    "GPU available: False",  # no GPU on this machine: nothing to do
    "TPU available: False",
    "Skipping setting a default `ModelSummary`",  # genlip fit installs the plain summary itself
    "HPU available: False",
)
_LIGHTNING_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever `sys.stderr` is now (rich's live display and pytest replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)
        self.set_name(_HANDLER_NAME)

    @property  # type: ignore[override]
    def stream(self):  # noqa: D401 - property keeps StreamHandler's interface
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


class _Formatter(logging.Formatter):
    def __init__(self, with_names: bool) -> None:
        super().__init__()
        self.with_names = with_names

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and self.with_names:
            message = f"{message}\n{self.formatException(record.exc_info)}"
        level = "" if record.levelno < logging.WARNING else f"{record.levelname.lower()}: "
        name = f"[{record.name}] " if self.with_names else ""
        return f"{PREFIX}: {level}{name}{message}"


class _DropMessages(logging.Filter):
    """Drops records whose message contains one of `needles`."""

    def __init__(self, needles: tuple[str, ...]) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(n in message for n in self.needles)


class _NoZeroFlops(logging.Filter):
    """Lightning's model summary ends with "0  Total FLOPs", and its table has a FLOPs column of zeros, when the
    model has no `example_input_array`: a count it never made, read as a fact. Both go; the rest stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "flops" in message.lower():
            message = re.sub(r"\n[ \t]*0[ \t]+Total FLOPs[^\n]*", "", message, flags=re.I)
            record.msg, record.args = _without_zero_flops_column(message), ()
        return True


def _without_zero_flops_column(summary: str) -> str:
    """The summary table without its last column when that is "FLOPs" and every row there says 0."""
    lines = summary.split("\n")
    header = next((i for i, line in enumerate(lines) if re.search(r"\|\s*FLOPs\s*$", line)), None)
    if header is None:
        return summary
    rows = [i for i, line in enumerate(lines) if i > header and re.match(r"\s*\d+\s*\|", line)]
    if not rows or not all(re.search(r"\|\s*0\s*$", lines[i]) for i in rows):
        return summary  # a real count (or no table): keep it
    for i in [header, *rows]:
        lines[i] = lines[i][:lines[i].rindex("|")].rstrip()
    width = max(len(lines[i]) for i in [header, *rows])
    return "\n".join("-" * width if set(line) == {"-"} and len(line) > width else line for line in lines)


_SUMMARY_LOGGER = "lightning.pytorch.callbacks.model_summary"


@contextlib.contextmanager
def counted_library_warnings(package: str = "PIL", what: str = "decoding images") -> Iterator[collections.Counter]:
    """Count the warnings `package` raises in the block (e.g. PIL's "Palette images with Transparency ..." once
    per such file) and say them in one line at the end instead of one stderr block each; other warnings pass."""
    counts: collections.Counter = collections.Counter()
    marker = f"{os.sep}{package}{os.sep}"
    with warnings.catch_warnings():
        shown = warnings.showwarning
        warnings.filterwarnings("always", module=rf"{re.escape(package)}(\.|$)")  # count each, not once per place

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
            if marker in str(filename):
                counts[f"{category.__name__}: {str(message).splitlines()[0][:160]}"] += 1
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            yield counts
        finally:
            warnings.showwarning = shown
    if counts:
        common, n = counts.most_common(1)[0]
        others = f"; {len(counts) - 1} other kind(s)" if len(counts) > 1 else ""
        logging.getLogger(ROOT).warning("%s warned %d time(s) while %s (most often %dx: %s%s); the files were read",
                                        package, sum(counts.values()), what, n, common, others)


def level_for(verbosity: int) -> int:
    """-2 -> ERROR, -1 -> WARNING, 0 -> INFO, >= 1 -> DEBUG."""
    if verbosity >= 1:
        return logging.DEBUG
    return {0: logging.INFO, -1: logging.WARNING}.get(verbosity, logging.ERROR)


_verbosity = 0


def verbosity() -> int:
    """The verbosity set by the last `configure()` (0 when never called)."""
    return _verbosity


def configure(verbosity: int = 0) -> logging.Logger:
    """Give the `genlip_lit` logger its one stderr handler at the level for `verbosity`; idempotent."""
    global _verbosity
    _verbosity = verbosity
    logger = logging.getLogger(ROOT)
    logger.setLevel(level_for(verbosity))
    handler = next((h for h in logger.handlers if h.get_name() == _HANDLER_NAME), None)
    if handler is None:
        handler = _StderrHandler()
        logger.addHandler(handler)
    handler.setFormatter(_Formatter(with_names=verbosity >= 1))
    # propagate stays on: pytest's caplog and an application's own root handlers still see genlip's records
    sync_library_levels()
    quiet_library_noise()
    return logger


def sync_library_levels() -> None:
    """Lightning's own info lines (seed, model summary, devices) follow `-q` too. Lightning sets its loggers to
    INFO when it is imported, so the Lightning commands call this again after importing it."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(max(level_for(_verbosity), logging.INFO))


def quiet_library_noise() -> None:
    """Mute, at their source, library messages that say nothing actionable about a genlip run."""
    # jsonargparse: deprecation notices about its own internals that LightningCLI still calls.
    os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
    # litdata asks PyPI for a newer version when a dataset is built (also set in genlip_lit/__init__.py).
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")
    for name in _LIGHTNING_LOGGERS:
        target = logging.getLogger(name)
        if not any(isinstance(f, _DropMessages) for f in target.filters):
            target.addFilter(_DropMessages(_LIGHTNING_NOISE))
    summary = logging.getLogger(_SUMMARY_LOGGER)
    if not any(isinstance(f, _NoZeroFlops) for f in summary.filters):
        summary.addFilter(_NoZeroFlops())
    # genlip's main() hands LightningCLI its arguments (after taking out -v/-q) while sys.argv holds them too.
    warnings.filterwarnings("ignore", message=r"LightningCLI's args parameter is intended")
    # lightning 2.6 under torch >= 2.10 uses a deprecated pytree check internally.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    # litdata's StreamingDataset defines __len__ and shards per worker itself, which this warning does not know.
    warnings.filterwarnings("ignore", message=r".*IterableDataset. has .__len__. defined.*")


def mute_gpu_unused_warning() -> None:
    """For runs that chose `accelerator: cpu` on purpose: Lightning's "GPU available but not used" is noise."""
    warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
