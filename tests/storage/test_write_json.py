"""The one JSON writer (storage.paths.write_json): strict JSON, local or remote, and never half a file: these files
mark work done (an ingest unit, a finished comparison run, a complete dataset), so an interrupted write must leave
the previous file (or none) and no temporary file behind."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest

from genlip_lit.storage import paths as storage

OLD = {"done": True, "kept": 3}


def test_nan_is_null_and_the_text_is_strict_json(tmp_path) -> None:
    storage.write_json(tmp_path / "r.json", {"a": [1.0, float("nan")], "b": {"c": math.nan}, "t": (1, 2)}, indent=1)
    text = (tmp_path / "r.json").read_text()
    assert json.loads(text, parse_constant=lambda name: pytest.fail(f"non-strict {name}")) == {
        "a": [1.0, None], "b": {"c": None}, "t": [1, 2]}
    assert text.startswith('{\n "a"')  # the indent asked for
    assert os.listdir(tmp_path) == ["r.json"]


def test_a_remote_url_is_written_in_one_put() -> None:
    url = "memory://genlip-test-bucket/run/report.json"  # fsspec's in-process store: no server, no traffic
    storage.write_json(url, {"x": float("nan"), "y": 1})
    assert storage.read_json(url) == {"x": None, "y": 1}
    storage.remove("memory://genlip-test-bucket")


def test_a_failed_or_interrupted_write_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch) -> None:
    path = tmp_path / "unit-0.json"
    storage.write_json(path, OLD)
    with pytest.raises(TypeError):  # not JSON: refused before anything is written
        storage.write_json(path, {"x": object()})
    assert json.loads(path.read_text()) == OLD and os.listdir(tmp_path) == ["unit-0.json"]

    def stopped(*_):  # Ctrl-C between writing the new text and putting it in place
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", stopped)
    with pytest.raises(KeyboardInterrupt):
        storage.write_json(path, {"done": False})
    assert json.loads(path.read_text()) == OLD and os.listdir(tmp_path) == ["unit-0.json"]


KEEP_WRITING = """
import sys
from genlip_lit.storage.paths import write_json
i = 0
while True:
    write_json(sys.argv[1], {"i": i, "pad": "x" * 4_000_000})
    i += 1
"""


def test_a_killed_writer_never_leaves_half_a_file(tmp_path) -> None:
    path = tmp_path / "result.json"
    proc = subprocess.Popen([sys.executable, "-c", KEEP_WRITING, str(path)])
    try:
        deadline = time.monotonic() + 60
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)  # several rewrites in flight
    finally:
        proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the worst case
        proc.wait()
    payload = json.loads(path.read_text())  # whole: one complete write, never a prefix of one
    assert payload["pad"] == "x" * 4_000_000 and payload["i"] >= 0
