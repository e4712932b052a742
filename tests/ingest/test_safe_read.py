"""ingest/safe_read.py and the readers that use it: hostile files are refused (counted), never opened.

Every payload is built here, in tmp_path: FIFOs, device symlinks, paths leading outside the input tree, a tar
member that declares 100 GB while holding nothing.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest.layouts import open_source
from genlip_lit.ingest.safe_read import ReadLimits, Refused, check_file, input_roots, parse_bytes, read_file
from genlip_lit.ingest.sources import Unit, WebDatasetSource

needs_posix = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs and /dev need a POSIX system")


def _jpeg(color=(200, 30, 30), size=(40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG")
    return buffer.getvalue()


def _folder(root, n=2) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"ok{i}.jpg").write_bytes(_jpeg((i * 90, 10, 10)))
        (root / f"ok{i}.txt").write_text(f"a red box {i}")


def _read_all(source) -> dict[str, tuple[str | None, str]]:
    """key -> (skip reason or None, caption) of every record, after the listing."""
    out = {}
    for unit in source.units():
        for r in source.read(unit):
            caption = r.caption.decode() if isinstance(r.caption, bytes) else r.caption
            out[r.key] = (r.error_reason if r.image is None else None, caption)
    return out


def test_parse_bytes() -> None:
    assert parse_bytes("64MiB") == 64 * 2**20 and parse_bytes("100MB") == 10**8 and parse_bytes("1G") == 2**30
    assert parse_bytes("1048576") == 2**20 and parse_bytes(5) == 5 and parse_bytes("1.5KiB") == 1536
    with pytest.raises(ValueError, match="not a size"):
        parse_bytes("lots")
    with pytest.raises(ValueError, match="positive"):
        ReadLimits(max_bytes=0)


def test_size_cap_is_judged_before_reading(tmp_path) -> None:
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 1000)
    roots = input_roots([str(tmp_path)])
    assert read_file(str(big), roots, ReadLimits(max_bytes=1000)) == b"x" * 1000
    with pytest.raises(Refused) as info:
        read_file(str(big), roots, ReadLimits(max_bytes=999))
    assert info.value.reason == "too_many_bytes" and "1000 bytes" in info.value.detail
    with pytest.raises(FileNotFoundError):
        check_file(str(tmp_path / "gone.jpg"), roots, ReadLimits())


@needs_posix
@pytest.mark.timeout(60)  # the bug this guards against is a read that blocks forever
def test_fifo_named_like_an_image_is_skipped_unopened(tmp_path) -> None:
    _folder(tmp_path / "in")
    os.mkfifo(tmp_path / "in" / "x.jpg")  # nobody ever writes to it: opening it would block
    (tmp_path / "in" / "x.txt").write_text("a pipe")
    os.mkfifo(tmp_path / "in" / "ok1.json")  # a FIFO sidecar: the sample is refused, not left waiting
    source = open_source([str(tmp_path / "in")])
    records = _read_all(source)
    assert records == {"ok0": (None, "a red box 0"), "ok1": ("not_a_regular_file", "a red box 1")}
    assert [(os.path.basename(p), reason) for p, reason, _ in source.refused] == [("x.jpg", "not_a_regular_file")]
    assert "is a FIFO" in source.refused[0][2]


@needs_posix
def test_symlink_to_a_device_is_refused(tmp_path) -> None:
    _folder(tmp_path / "in")
    os.symlink("/dev/zero", tmp_path / "in" / "z.jpg")  # an endless read before
    (tmp_path / "in" / "z.txt").write_text("zeros")
    source = open_source([str(tmp_path / "in")])
    _read_all(source)
    assert [(os.path.basename(p), r) for p, r, _ in source.refused] == [("z.jpg", "outside_input_root")]
    # allowed outside, it is still no regular file: refused without being opened
    source = open_source([str(tmp_path / "in")], limits=ReadLimits(allow_outside=True))
    _read_all(source)
    assert [(os.path.basename(p), r) for p, r, _ in source.refused] == [("z.jpg", "not_a_regular_file")]
    assert "character device" in source.refused[0][2]


def test_symlinks_leaving_the_tree_are_refused_unless_allowed(tmp_path) -> None:
    _folder(tmp_path / "in" / "sub")
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET outside the tree")
    (tmp_path / "in" / "sub" / "ok0.txt").unlink()
    os.symlink(secret, tmp_path / "in" / "sub" / "ok0.txt")  # a caption sidecar pointing outside
    os.symlink(tmp_path / "in" / "sub" / "ok1.jpg", tmp_path / "in" / "inside.jpg")  # inside: fine
    (tmp_path / "in" / "inside.txt").write_text("a link inside")
    records = _read_all(open_source([str(tmp_path / "in")]))
    assert records["sub/ok0"] == ("outside_input_root", None)  # refused: the secret is never read
    assert records["sub/ok1"] == (None, "a red box 1") and records["inside"] == (None, "a link inside")
    records = _read_all(open_source([str(tmp_path / "in")], limits=ReadLimits(allow_outside=True)))
    assert records["sub/ok0"] == (None, "SECRET outside the tree")


def test_manifest_paths_outside_the_root(tmp_path) -> None:
    (tmp_path / "m" / "images").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(_jpeg((1, 2, 3)))
    (tmp_path / "m" / "images" / "0.jpg").write_bytes(_jpeg())
    rows = [{"image": "images/0.jpg", "caption": "inside"}, {"image": "../outside.jpg", "caption": "relative"},
            {"image": str(tmp_path / "outside.jpg"), "caption": "absolute"}]
    (tmp_path / "m" / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = str(tmp_path / "m" / "rows.jsonl")
    records = _read_all(open_source([manifest]))
    assert [v[0] for v in records.values()] == [None, "outside_input_root", "outside_input_root"]
    records = _read_all(open_source([manifest], limits=ReadLimits(allow_outside=True)))
    assert [v[0] for v in records.values()] == [None, None, None]


def test_manifest_of_paths_that_all_leave_the_root_is_one_structural_error(tmp_path) -> None:
    (tmp_path / "m").mkdir()
    rows = [{"image": str(tmp_path / f"{i}.jpg"), "caption": "elsewhere"} for i in range(3)]
    (tmp_path / "m" / "rows.csv").write_text("image,caption\n" + "".join(f"{r['image']},x\n" for r in rows))
    with pytest.raises(GenLIPUserError, match=r"image paths lead outside the input tree.*pass --allow-outside"):
        open_source([str(tmp_path / "m" / "rows.csv")]).units()
    assert len(open_source([str(tmp_path / "m" / "rows.csv")], limits=ReadLimits(allow_outside=True)).units()) == 1


def test_parquet_paths_outside_the_root(tmp_path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "outside.jpg").write_bytes(_jpeg())
    (tmp_path / "p" / "in.jpg").write_bytes(_jpeg())
    images = [{"bytes": None, "path": "in.jpg"}, {"bytes": None, "path": "../outside.jpg"}]
    pq.write_table(pa.table({"image": images, "caption": ["a", "b"]}), tmp_path / "p" / "part.parquet")
    records = _read_all(open_source([str(tmp_path / "p")]))
    assert [v[0] for v in records.values()] == [None, "outside_input_root"]
    records = _read_all(open_source([str(tmp_path / "p")], limits=ReadLimits(allow_outside=True)))
    assert [v[0] for v in records.values()] == [None, None]


def _sparse_tar(path, declared: int) -> None:
    """A tar whose first member declares `declared` bytes (a GNU sparse PAX header) and holds none."""
    info = tarfile.TarInfo("000000001.jpg")
    info.size = 0
    info.pax_headers = {"GNU.sparse.map": "0,0", "GNU.sparse.size": str(declared)}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
        for name, data in (("000000001.txt", b"sparse"), ("000000002.jpg", _jpeg()), ("000000002.txt", b"fine")):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))


def test_sparse_tar_member_over_the_cap_is_never_inflated(tmp_path) -> None:
    path = tmp_path / "00000.tar"
    _sparse_tar(path, declared=100 * 2**30)
    assert os.path.getsize(path) < 20_000  # a 10 KB file declaring 100 GB
    tracemalloc.start()
    try:
        records = list(WebDatasetSource([str(path)]).read(Unit(str(path))))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20  # nothing near the declared size was allocated
    assert [(r.key, r.error_reason if r.image is None else None) for r in records] == [
        ("00000.tar/000000001", "too_many_bytes"), ("00000.tar/000000002", None)]
    assert "declares 107374182400 bytes" in records[0].error
    # a normal member over a small cap is refused the same way
    small = WebDatasetSource([str(path)], limits=ReadLimits(max_bytes=100))
    assert [r.error_reason for r in small.read(Unit(str(path)))] == ["too_many_bytes", "too_many_bytes"]


def test_a_member_declaring_100_gb_in_a_plain_tar_file_is_skipped_by_seeking(tmp_path) -> None:
    """At 74076bd the member was skipped correctly but read through (147 s for 100 GB of holes): a file-backed
    plain tar is read seekable, so skipping it is one seek."""
    import time

    declared = 100 * 10**9
    path = tmp_path / "00000.tar"
    with open(path, "wb") as fh:
        big = tarfile.TarInfo("000000001.jpg")
        big.size = declared
        fh.write(big.tobuf(format=tarfile.GNU_FORMAT))
        fh.seek(-(-declared // 512) * 512, os.SEEK_CUR)  # the member's data: a hole, never written
        with tarfile.open(fileobj=fh, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for name, data in (("000000001.txt", b"huge"), ("000000002.jpg", _jpeg()), ("000000002.txt", b"fine")):
                member = tarfile.TarInfo(name)
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))
    assert os.path.getsize(path) > declared and os.stat(path).st_blocks * 512 < 10**6  # sparse on disk
    start = time.perf_counter()
    records = list(WebDatasetSource([str(path)]).read(Unit(str(path))))
    assert time.perf_counter() - start < 5
    assert [(r.key, r.error_reason if r.image is None else r.caption) for r in records] == [
        ("00000.tar/000000001", "too_many_bytes"), ("00000.tar/000000002", b"fine")]
    assert f"declares {declared} bytes" in records[0].error
