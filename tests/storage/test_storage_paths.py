"""genlip_lit/storage/paths.py without a server: paths, the one-line verdicts on store failures, missing drivers.
(Against a real S3 API: tests/storage/test_object_storage.py.)"""

from __future__ import annotations

import importlib.util

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage import paths as storage

URL = "s3://bucket/data/train/index.json"


def _client_error(code: str, message: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": message}}, "HeadObject")


def test_urls_and_local_paths_are_told_apart_and_joined_their_way():
    assert storage.is_remote("s3://b/x") and storage.is_remote("local:/data") and not storage.is_remote("data/x")
    assert storage.join("s3://b/runs/", "corpus_cpu", "/checkpoints") == "s3://b/runs/corpus_cpu/checkpoints"
    assert storage.join("runs", "a") == "runs/a"


@pytest.mark.parametrize(("err", "verdict"), [
    (NoCredentialsError(), "no credentials for the object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"),
    (EndpointConnectionError(endpoint_url="http://127.0.0.1:40312/bucket"),
     "cannot reach the object store at http://127.0.0.1:40312: check AWS_ENDPOINT_URL"),
    (_client_error("NoSuchBucket", "The specified bucket does not exist"),
     "bucket 'bucket' does not exist at http://127.0.0.1:40312"),
    (_client_error("403", "Forbidden"), "access denied by the object store at http://127.0.0.1:40312"),
    (_client_error("404", "Not Found"), "not found at http://127.0.0.1:40312"),
    (FileNotFoundError("bucket/data/train/index.json"), "not found at http://127.0.0.1:40312"),
])
def test_store_failures_become_one_line_naming_the_url(err, verdict, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:40312")  # a port holding "403" is no access error
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(GenLIPUserError) as info, storage.storage_errors(URL):
        raise err
    assert str(info.value).startswith(f"{URL}: {verdict}") and "\n" not in str(info.value)


def test_other_errors_pass_through_untouched():
    with pytest.raises(ZeroDivisionError), storage.storage_errors(URL):
        1 / 0  # noqa: B018 - the error is the point


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_a_missing_fsspec_driver_is_one_line_naming_the_package():
    with pytest.raises(GenLIPUserError, match=r"^gs://bucket/x: reading gs:// needs the gcsfs package"):
        storage.isfile("gs://bucket/x")


def test_local_paths_take_the_plain_filesystem_route(tmp_path):
    (tmp_path / "a.json").write_text('{"k": 1}')
    assert storage.isfile(str(tmp_path / "a.json")) and not storage.isfile(str(tmp_path / "b.json"))
    assert storage.read_json(str(tmp_path / "a.json")) == {"k": 1}
    with storage.local_copy(str(tmp_path / "a.json")) as local:
        assert local == str(tmp_path / "a.json")
