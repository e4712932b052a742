"""Corpus readers for `genlip optimize --input` (ingest/sources.py, table_sources.py, layouts.py): input
resolution, layout detection, units, caption/label fields and damaged inputs, for the webdataset, folder, parquet
and manifest layouts."""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from genlip_lit.errors import GenLIPUserError
from genlip_lit.ingest import sources
from genlip_lit.ingest.cleaning import Skip, clean_caption, clean_label
from genlip_lit.ingest.demo_corpus import (
    LAYOUTS,
    demo_samples,
    write_demo_corpus,
    write_folder,
    write_manifest,
    write_parquet,
    write_webdataset,
)
from genlip_lit.ingest.layouts import detect_format, open_source
from genlip_lit.ingest.sources import (
    Record,
    ShardReadError,
    Unit,
    expand_braces,
    resolve_inputs,
)

NUM = 24


@pytest.fixture(scope="module")
def samples():
    return list(demo_samples(NUM))


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict[str, str]:
    return write_demo_corpus(str(tmp_path_factory.mktemp("demo")), num_images=NUM)


def png(color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path, members: list[tuple[str, bytes]]) -> str:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def read_all(source: sources.Source) -> list[Record]:
    return [record for unit in source.units() for record in source.read(unit)]


# --- inputs ----------------------------------------------------------------------------------------------------


def test_expand_braces() -> None:
    assert expand_braces("a/{000..002}.tar") == ["a/000.tar", "a/001.tar", "a/002.tar"]
    assert expand_braces("s/{8..10}.tar") == ["s/8.tar", "s/9.tar", "s/10.tar"]  # no leading zero: no padding
    assert expand_braces("{00..01}/p-{0..2}.tar") == [
        "00/p-0.tar", "00/p-1.tar", "00/p-2.tar", "01/p-0.tar", "01/p-1.tar", "01/p-2.tar",
    ]
    assert len(expand_braces("x{0..3}y{00..09}z{1..2}")) == 4 * 10 * 2
    assert expand_braces("plain/path.tar") == ["plain/path.tar"]
    assert expand_braces("{a,b}.tar") == ["{a,b}.tar"]  # only numeric ranges are expanded


def test_resolve_inputs(tmp_path) -> None:
    for name in ("000.tar", "001.tar", "002.tar", "notes.md"):
        (tmp_path / name).write_bytes(b"x")
    absolute = [str(tmp_path / f"00{i}.tar") for i in range(3)]
    assert resolve_inputs([str(tmp_path / "{000..002}.tar")]) == absolute
    assert resolve_inputs([str(tmp_path / "*.tar")]) == absolute  # glob: sorted
    assert resolve_inputs([str(tmp_path)]) == [str(tmp_path)]
    with pytest.raises(GenLIPUserError, match="003.tar' does not exist"):
        resolve_inputs([str(tmp_path / "{000..003}.tar")])
    with pytest.raises(GenLIPUserError, match="missing.parquet"):
        resolve_inputs([str(tmp_path / "000.tar"), str(tmp_path / "missing.parquet")])
    with pytest.raises(GenLIPUserError, match=r"\*\.parquet' matches nothing"):
        resolve_inputs([str(tmp_path / "*.parquet")])


def test_detect_format(demo, tmp_path) -> None:
    for layout in LAYOUTS:
        assert detect_format(resolve_inputs([demo[layout]])) == layout
    assert detect_format([os.path.dirname(demo["parquet"])]) == "parquet"
    assert detect_format([os.path.dirname(demo["manifest"])]) == "manifest"  # manifest.jsonl beside images/
    assert detect_format([os.path.join(demo["webdataset"], "00000.tar")]) == "webdataset"
    with pytest.raises(GenLIPUserError, match=r"mix layouts \['parquet', 'webdataset'\]"):
        detect_format([demo["webdataset"], demo["parquet"]])
    (tmp_path / "notes.md").write_text("nothing to ingest")
    (tmp_path / ".hidden.jpg").write_bytes(png())  # hidden files do not count
    with pytest.raises(GenLIPUserError, match="cannot tell the layout.*--format"):
        detect_format([str(tmp_path)])


def test_unknown_format_is_refused(demo) -> None:
    with pytest.raises(GenLIPUserError, match="--format 'lmdb'"):
        open_source([demo["folder"]], fmt="lmdb")
    assert isinstance(open_source([demo["folder"]], fmt="folder"), sources.FolderSource)


# --- the four layouts --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_reads_the_same_samples(demo, samples, layout) -> None:
    source = open_source([demo[layout]])
    assert source.format == layout
    records = read_all(source)
    assert [(clean_caption(r.caption), clean_label(r.label, None), r.image) for r in records] == [
        (s.caption, s.label, s.image) for s in samples
    ]
    assert all(r.error is None for r in records)
    assert len({r.key for r in records}) == NUM
    assert all(r.source_bytes >= len(r.image) for r in records)


def test_record_keys(demo) -> None:
    keys = {layout: read_all(open_source([demo[layout]]))[5].key for layout in LAYOUTS}
    manifest, ext = keys["manifest"].rsplit(".", 1)  # line number, then the image path the manifest writes
    assert manifest == "manifest/6:images/000000005" and ext in ("jpg", "png", "webp")
    keys["manifest"] = "manifest/6"
    assert keys == {
        "webdataset": "00000.tar/000000005",
        "folder": os.path.join("00000", "000000005"),
        "parquet": "000000005",  # the parquet file has a key column
        "manifest": "manifest/6",
    }


def test_webdataset_one_unit_per_tar(samples, tmp_path) -> None:
    write_webdataset(samples, str(tmp_path), per_shard=10)
    source = open_source([str(tmp_path)])
    units = source.units()
    assert [u.path for u in units] == [str(tmp_path / f"0000{i}.tar") for i in range(3)]
    assert [len(list(source.read(u))) for u in units] == [10, 10, 4]
    assert [r.key for r in source.read(units[2])][0] == "00002.tar/000000020"
    # the same shards named one by one, with a brace range
    assert open_source([str(tmp_path / "{00000..00001}.tar")]).units() == units[:2]


def test_parquet_one_unit_per_row_group(samples, tmp_path) -> None:
    path = write_parquet(samples, str(tmp_path), rows_per_group=10)
    source = open_source([path])
    units = source.units()
    assert [(u.path, u.start, u.stop) for u in units] == [(path, g, g + 1) for g in range(3)]
    groups = [list(source.read(u)) for u in units]
    assert [len(g) for g in groups] == [10, 10, 4]
    assert [r.key for r in groups[1]] == [s.key for s in samples[10:20]]
    assert [r.image for r in groups[2]] == [s.image for s in samples[20:]]


def test_parquet_keys_without_a_key_column(samples, tmp_path) -> None:
    path = tmp_path / "plain.parquet"
    table = pa.table({"jpg": [s.image for s in samples], "text": [s.caption for s in samples]})
    pq.write_table(table, path, row_group_size=10)
    source = open_source([str(path)])
    records = [r for u in source.units() for r in source.read(u)]
    assert [r.key for r in records[9:12]] == ["plain/9", "plain/10", "plain/11"]  # offsets run across row groups
    assert records[11].image == samples[11].image and records[11].caption == samples[11].caption
    assert all(r.label is None for r in records)  # no label column: none


@pytest.mark.parametrize("layout", ["folder", "manifest"])
def test_folder_and_manifest_are_cut_in_slices(samples, tmp_path, monkeypatch, layout) -> None:
    monkeypatch.setattr(sources, "FILES_PER_UNIT", 7)
    if layout == "folder":
        path = write_folder(samples, str(tmp_path), per_dir=10)  # three sub-folders
    else:
        path = write_manifest(samples, str(tmp_path))
    source = open_source([path])
    units = source.units()
    assert [(u.start, u.stop) for u in units] == [(0, 7), (7, 14), (14, 21), (21, 24)]
    if layout == "folder":
        assert units[1].first == os.path.join(path, "00000", f"{samples[7].key}.{samples[7].ext}")
    slices = [list(source.read(u)) for u in units]
    assert [len(s) for s in slices] == [7, 7, 7, 3]
    assert [r.image for s in slices for r in s] == [s.image for s in samples]
    # a fresh reader (as a worker process has) reads the same slice
    assert [r.key for r in open_source([path]).read(units[2])] == [r.key for r in slices[2]]


def test_folder_notices_a_changed_file_list(samples, tmp_path) -> None:
    write_folder(samples[:5], str(tmp_path))
    units = open_source([str(tmp_path)]).units()
    Image.new("RGB", (32, 32)).save(tmp_path / "00000" / "0.png")  # sorts first: every index moves
    with pytest.raises(GenLIPUserError, match="changed"):
        list(open_source([str(tmp_path)]).read(units[0]))


# --- caption and label fields ----------------------------------------------------------------------------------


def test_parquet_missing_caption_column_fails_before_any_work(demo, monkeypatch) -> None:
    def no_reading(*args, **kwargs):
        raise AssertionError("row data read before the columns were checked")

    monkeypatch.setattr(pq.ParquetFile, "read_row_group", no_reading)
    with pytest.raises(GenLIPUserError, match=r"no caption column \['missing_col'\].*'org_caption'.*--caption-field"):
        open_source([demo["parquet"]], caption_fields=["missing_col"]).units()
    with pytest.raises(GenLIPUserError, match=r"\['re_caption'\]"):  # one missing name in a list is enough
        open_source([demo["parquet"]], caption_fields=["caption", "re_caption"]).units()
    with pytest.raises(GenLIPUserError, match="label column.*--label-field"):
        open_source([demo["parquet"]], label_field="class").units()
    with pytest.raises(GenLIPUserError, match="image column.*--image-field"):
        open_source([demo["parquet"]], image_field="pixels").units()


@pytest.mark.parametrize(("values", "arrow_type"), [(["a.jpg", "b.jpg"], "string"), ([1, 2], "int64"),
                                                    ([{"bytes": "x"}, {"bytes": "y"}], "struct<bytes: string>")])
def test_parquet_image_column_of_the_wrong_type_is_one_structural_error(tmp_path, monkeypatch, values,
                                                                        arrow_type) -> None:
    pq.write_table(pa.table({"image": values, "caption": ["x", "y"]}), tmp_path / "p.parquet")
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", lambda *a, **k: pytest.fail("rows read before the check"))
    with pytest.raises(GenLIPUserError, match=f"column 'image' holds {re.escape(arrow_type)}, not image bytes") as info:
        open_source([str(tmp_path)]).units()
    assert "\n" not in str(info.value) and "--image-field" in str(info.value)


def test_parquet_caption_fallback_order(tmp_path) -> None:
    path = tmp_path / "recap.parquet"
    pq.write_table(pa.table({
        "image": [png()] * 6,
        "re_caption": ["a long recaption", "", None, "   ", "another recaption", ""],
        "org_caption": ["alt 0", "alt 1", "alt 2", "alt 3", "alt 4", " "],
    }), path)
    source = open_source([str(path)], caption_fields=["re_caption", "org_caption"])
    captions = [r.caption for r in read_all(source)]
    assert captions[:5] == ["a long recaption", "alt 1", "alt 2", "alt 3", "another recaption"]
    assert captions[5] == ""  # all empty: handed on as empty (-> empty_caption), not as missing
    only_org = open_source([str(path)], caption_fields=["org_caption"])
    assert [r.caption for r in read_all(only_org)][:2] == ["alt 0", "alt 1"]
    default = open_source([str(path)])  # no caption/text/txt column and no --caption-field
    with pytest.raises(GenLIPUserError, match="usual caption columns.*re_caption.*--caption-field"):
        default.units()


def test_parquet_image_struct_with_a_path_only(tmp_path) -> None:
    (tmp_path / "pics").mkdir()
    (tmp_path / "pics" / "a.png").write_bytes(png((1, 2, 3)))
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    refs = [{"bytes": None, "path": "pics/a.png"}, {"bytes": None, "path": "pics/gone.png"},
            {"bytes": None, "path": None}]
    pq.write_table(pa.table({"image": pa.array(refs, type=image_type), "caption": ["a", "b", "c"]}),
                   tmp_path / "refs.parquet")
    a, gone, empty = read_all(open_source([str(tmp_path / "refs.parquet")]))
    assert a.image == png((1, 2, 3)) and a.error is None
    assert gone.image is None and "gone.png" in gone.error
    assert empty.image is None and "'image' is empty" in empty.error


def test_webdataset_caption_from_json_sidecar(tmp_path) -> None:
    members = []
    for i in range(3):
        meta = {"alt": f"alt text {i}", "cls_name": f"class{i}"}
        members += [(f"k{i}.png", png((i, i, i))), (f"k{i}.json", json.dumps(meta).encode())]
    path = write_tar(tmp_path / "00000.tar", members)
    records = read_all(open_source([path], caption_fields=["alt"], label_field="cls_name"))
    assert [(r.key, r.caption, r.label) for r in records] == [
        (f"00000.tar/k{i}", f"alt text {i}", f"class{i}") for i in range(3)
    ]
    assert records[1].image == png((1, 1, 1))
    with pytest.raises(GenLIPUserError, match=r"has a caption in \['txt'\]"):  # default: the .txt sidecar
        open_source([path]).units()
    with pytest.raises(GenLIPUserError, match=r"\['title'\]"):
        open_source([path], caption_fields=["title"]).units()


def test_folder_caption_from_json_sidecar_with_fallback(tmp_path) -> None:
    for i, text in enumerate(["from txt", "", "  \n", None]):
        (tmp_path / f"{i}.png").write_bytes(png())
        (tmp_path / f"{i}.json").write_text(json.dumps({"alt": f"alt {i}", "label": i}))
        if text is not None:
            (tmp_path / f"{i}.txt").write_text(text)
    records = read_all(open_source([str(tmp_path)], caption_fields=["alt"]))
    assert [r.caption for r in records] == ["alt 0", "alt 1", "alt 2", "alt 3"]
    assert [r.key for r in records] == ["0", "1", "2", "3"]
    # first non-empty wins: an empty or whitespace .txt falls through to the .json key
    records = read_all(open_source([str(tmp_path)], caption_fields=["txt", "alt"]))
    assert [clean_caption(r.caption) for r in records] == ["from txt", "alt 1", "alt 2", "alt 3"]
    assert [r.label for r in read_all(open_source([str(tmp_path)], caption_fields=["alt"], label_field="label"))] == [
        0, 1, 2, 3,
    ]


def test_sidecar_caption_all_empty_stays_empty(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "a.txt").write_text("  ")
    (tmp_path / "a.json").write_text(json.dumps({"alt": ""}))
    (tmp_path / "b.png").write_bytes(png())
    (tmp_path / "b.txt").write_text("fine")
    a, b = read_all(open_source([str(tmp_path)], caption_fields=["txt", "alt"]))
    assert a.caption is not None  # present, but empty: counted as empty_caption, not missing_caption
    with pytest.raises(Skip) as info:
        clean_caption(a.caption)
    assert info.value.reason == "empty_caption"
    assert clean_caption(b.caption) == "fine"


def test_manifest_csv_and_tsv(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png((1, 1, 1)))
    (tmp_path / "b.png").write_bytes(png((2, 2, 2)))
    (tmp_path / "m.csv").write_text('file,text,label\na.png,"a, quoted caption",3\nb.png,plain,\n')
    (tmp_path / "m.tsv").write_text("image_path\tcaption\na.png\ttab separated\n")
    a, b = read_all(open_source([str(tmp_path / "m.csv")]))
    assert (a.key, a.image, a.caption, a.label) == ("m/2:a.png", png((1, 1, 1)), "a, quoted caption", "3")
    assert (b.image, b.caption, clean_label(b.label, None)) == (png((2, 2, 2)), "plain", -1)
    (t,) = read_all(open_source([str(tmp_path / "m.tsv")]))
    assert (t.image, t.caption, t.label) == (png((1, 1, 1)), "tab separated", None)


def test_manifest_csv_with_byte_order_mark(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "m.csv").write_text("image,caption\na.png,saved by a spreadsheet\n", encoding="utf-8-sig")
    (tmp_path / "m.jsonl").write_text('{"image": "a.png", "caption": "bom"}\n', encoding="utf-8-sig")
    (record,) = read_all(open_source([str(tmp_path / "m.csv")]))
    assert (record.image, record.caption) == (png(), "saved by a spreadsheet")
    (record,) = read_all(open_source([str(tmp_path / "m.jsonl")]))
    assert (record.image, record.caption, record.error) == (png(), "bom", None)


def test_manifest_csv_row_with_extra_fields(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "m.csv").write_text("image,caption\na.png,fine\na.png,unquoted, comma\n")
    first, second = read_all(open_source([str(tmp_path / "m.csv")]))
    assert (first.caption, first.image) == ("fine", png())
    # a caption cut at an unquoted comma is not stored half: the row is skipped as bad_row, naming the line
    assert second.image is None and second.error_reason == "bad_row" and "line 3" in second.error


def test_manifest_without_caption_column(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    (tmp_path / "m.csv").write_text("image,description\na.png,a caption under another name\n")
    with pytest.raises(GenLIPUserError, match=r"none of the usual caption columns.*'description'.*--caption-field"):
        open_source([str(tmp_path / "m.csv")]).units()
    (record,) = read_all(open_source([str(tmp_path / "m.csv")], caption_fields=["description"]))
    assert record.caption == "a caption under another name"
    (tmp_path / "n.csv").write_text("picture,caption\na.png,x\n")
    with pytest.raises(GenLIPUserError, match="image path columns.*--image-field"):
        open_source([str(tmp_path / "n.csv")]).units()
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(GenLIPUserError, match="has no rows"):
        open_source([str(tmp_path / "empty.jsonl")]).units()


def test_manifest_rows_naming_no_readable_file(tmp_path) -> None:
    (tmp_path / "a.png").write_bytes(png())
    rows = [
        {"image": "a.png", "caption": "ok"},
        {"image": "missing.png", "caption": "gone"},
        {"image": "", "caption": "no path"},
        {"image": str(tmp_path / "a.png"), "caption": "absolute"},
    ]
    lines = [json.dumps(r) for r in rows] + ["{not json", "[1, 2]"]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    records = read_all(open_source([str(tmp_path / "m.jsonl")]))
    assert [r.key for r in records] == ["m/1:a.png", "m/2:missing.png", "m/3", f"m/4:{tmp_path / 'a.png'}", "m/5",
                                        "m/6"]
    ok, missing, empty, absolute, bad_json, not_object = records
    assert ok.image == png() and ok.error is None
    assert missing.image is None and missing.caption == "gone"
    assert "FileNotFoundError" in missing.error and "missing.png" in missing.error
    assert empty.image is None and "no 'image' value" in empty.error
    assert absolute.image == png()
    assert bad_json.image is None and "line 5 is not valid JSON" in bad_json.error
    assert not_object.image is None and "line 6 is not a JSON object" in not_object.error
    assert [r.error_reason for r in records] == ["missing_image"] * 4 + ["bad_row"] * 2


# --- damaged webdataset shards --------------------------------------------------------------------------------


def test_truncated_tar_keeps_the_leading_records(samples, tmp_path) -> None:
    path = write_webdataset(samples[:6], str(tmp_path / "full"))[0]
    with tarfile.open(path) as tar:
        image4 = tar.getmember(f"{samples[4].key}.{samples[4].ext}")
    data = Path(path).read_bytes()
    broken = tmp_path / "broken.tar"
    broken.write_bytes(data[: image4.offset_data + image4.size // 2])  # cut inside sample 4's image
    got: list[Record] = []
    with pytest.raises(ShardReadError) as info:
        for record in open_source([str(broken)]).read(Unit(str(broken))):
            got.append(record)
    assert info.value.path == str(broken)
    assert [r.image for r in got] == [s.image for s in samples[:4]]
    assert [clean_caption(r.caption) for r in got] == [s.caption for s in samples[:4]]


def test_tar_cut_at_a_member_boundary_is_noticed(samples, tmp_path) -> None:
    path = write_webdataset(samples[:6], str(tmp_path / "full"))[0]
    with tarfile.open(path) as tar:
        image4 = tar.getmember(f"{samples[4].key}.{samples[4].ext}")
    broken = tmp_path / "broken.tar"
    broken.write_bytes(Path(path).read_bytes()[: image4.offset])  # samples 0-3 complete, then nothing
    got: list[Record] = []
    with pytest.raises(ShardReadError, match="truncated"):
        for record in sources.WebDatasetSource([str(broken)]).read(Unit(str(broken))):
            got.append(record)
    assert [r.image for r in got] == [s.image for s in samples[:4]]
    assert len(list(sources.WebDatasetSource([path]).read(Unit(path)))) == 6  # the intact file reads cleanly


def test_not_a_tar_file(tmp_path) -> None:
    (tmp_path / "00000.tar").write_bytes(b"<html>not a tar</html>" * 100)
    with pytest.raises(ShardReadError):
        list(sources.WebDatasetSource([str(tmp_path)]).read(Unit(str(tmp_path / "00000.tar"))))
    with pytest.raises(GenLIPUserError, match="holds no samples"):
        open_source([str(tmp_path)]).units()


def test_webdataset_sample_without_image(tmp_path) -> None:
    path = write_tar(tmp_path / "00000.tar", [
        ("a.txt", b"caption only"),
        ("b.png", png()), ("b.txt", b"complete"), ("b.cls", b"4"),
        ("sub/c.jpeg", b"jpeg bytes"), ("sub/c.webp", b"webp bytes"), ("sub/c.txt", b"two images"),
    ])
    a, b, c = read_all(open_source([path]))
    assert (a.key, a.image, a.caption) == ("00000.tar/a", None, b"caption only")
    assert "no image member" in a.error and "txt" in a.error
    assert (b.image, b.caption, b.label, b.error) == (png(), b"complete", b"4", None)
    assert (c.key, c.image) == ("00000.tar/sub/c", b"jpeg bytes")  # the first image extension in the list
    (c,) = [r for r in read_all(open_source([path], image_field="webp")) if r.key.endswith("c")]
    assert c.image == b"webp bytes"
