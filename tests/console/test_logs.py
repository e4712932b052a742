"""genlip_lit.console.logs: `log.info` of a genlip_lit module reaches stderr as `genlip: ...`; -q hides it; noise muted."""

from __future__ import annotations

import logging

import pytest

from genlip_lit.cli import main
from genlip_lit.console import logs


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("genlip_lit")
    before = (logger.level, list(logger.handlers), logger.propagate, logs._verbosity)
    yield
    logger.setLevel(before[0])
    logger.handlers[:] = before[1]
    logger.propagate = before[2]
    logs._verbosity = before[3]


def _emit() -> None:
    log = logging.getLogger("genlip_lit.ingest.corpus")  # any genlip_lit module's logger
    log.debug("debug detail")
    log.info("wrote 3 shards")
    log.warning("skipped 2 images")


def test_info_reaches_stderr_with_the_genlip_prefix(capsys):
    logs.configure(0)
    _emit()
    captured = capsys.readouterr()
    assert captured.out == ""  # stdout stays for results
    assert captured.err.splitlines() == ["genlip: wrote 3 shards", "genlip: warning: skipped 2 images"]


def test_quiet_hides_info_and_verbose_adds_debug_with_names(capsys):
    logs.configure(-1)
    _emit()
    assert capsys.readouterr().err.splitlines() == ["genlip: warning: skipped 2 images"]
    logs.configure(1)
    _emit()
    assert capsys.readouterr().err.splitlines() == [
        "genlip: [genlip_lit.ingest.corpus] debug detail",
        "genlip: [genlip_lit.ingest.corpus] wrote 3 shards",
        "genlip: warning: [genlip_lit.ingest.corpus] skipped 2 images",
    ]


def test_configure_twice_keeps_one_handler():
    logs.configure(0)
    logs.configure(0)
    assert len(logging.getLogger("genlip_lit").handlers) == 1


def test_flags_before_or_after_the_command_set_the_level(capsys):
    for argv, level in ((["-q", "--help"], logging.WARNING), (["--help", "-v"], logging.DEBUG),
                        (["--help"], logging.INFO)):
        assert main(argv) == 0
        assert logging.getLogger("genlip_lit").level == level
    capsys.readouterr()


def test_lightning_adverts_and_no_gpu_lines_are_muted_but_warnings_kept(caplog):
    logs.configure(0)
    source = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    caplog.set_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero")
    source.info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
    source.info("GPU available: False, used: False")
    source.info("GPU available: True (cuda), used: True")
    source.warning("The number of training batches (4) is smaller than the logging interval")
    kept = [r.getMessage() for r in caplog.records]
    assert kept == ["GPU available: True (cuda), used: True",
                    "The number of training batches (4) is smaller than the logging interval"]
