"""Object storage (s3://, gs://, any fsspec URL) as a place like a local folder, for data, checkpoints and runs.

    AWS_ENDPOINT_URL=http://127.0.0.1:9000 genlip optimize --source synthetic --num-samples 2000 \
        --output s3://bucket/shapes          # then --data.init_args.data_dir s3://bucket/shapes, --ckpt s3://...

Shards are streamed by litdata (boto3, or obstore when installed); everything else (index and meta files,
checkpoints, run directories, uploads of `genlip optimize` output) goes through fsspec, as Lightning's own
checkpoint IO does (`s3fs` for s3://: `pip install 'genlip_lit[s3]'`). Endpoint and credentials come from the
usual environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ...), read by
botocore for both.

Every failure of the store (no such bucket or key, no credentials, access denied, an endpoint that does not
answer) becomes one `GenLIPUserError` line naming the URL (`storage_errors`), not a botocore traceback.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

from genlip_lit.errors import GenLIPUserError

PACKAGE_OF = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_remote(path: Any) -> bool:
    """A URL (s3://, gs://, azure://, hf://, local:...), not a plain local path."""
    text = str(path)
    return "://" in text or text.startswith("local:")


def join(base: str, *parts: str) -> str:
    """`os.path.join` for local paths, '/'-joined for URLs."""
    if not is_remote(base):
        return os.path.join(base, *parts)
    return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])


def endpoint() -> str | None:
    """The S3 endpoint botocore will use from the environment (None: AWS itself)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")


def _fs(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) of a URL; a missing driver package is one line naming it."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except ImportError as err:
        scheme = url.split("://", 1)[0]
        package = PACKAGE_OF.get(scheme, getattr(err, "name", None) or "an fsspec driver")
        extra = " (pip install 'genlip_lit[s3]')" if package == "s3fs" else ""
        raise GenLIPUserError(f"{url}: reading {scheme}:// needs the {package} package{extra}") from None
    except ValueError as err:  # an unknown protocol
        raise GenLIPUserError(f"{url}: {err}") from None


def failure(url: str, err: BaseException) -> str | None:
    """One line for an object-store failure on `url` (None when `err` is not one)."""
    chain, node = [], err
    while node is not None and len(chain) < 8:
        chain.append(node)
        node = node.__cause__ or node.__context__
    names = {type(e).__name__ for e in chain}
    text = " ".join(str(e) for e in chain)
    where = f" at {endpoint()}" if endpoint() else ""
    if "NoCredentialsError" in names or "Unable to locate credentials" in text:
        return (f"{url}: no credentials for the object store: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)")
    if names & {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError"} or "Could not connect to the endpoint" in text:
        return (f"{url}: cannot reach the object store{where or ' (AWS S3)'}: check AWS_ENDPOINT_URL and that the "
                "server is up")
    if "NoSuchBucket" in text or "bucket does not exist" in text.lower():
        bucket = url.split("://", 1)[-1].split("/", 1)[0]
        return f"{url}: bucket {bucket!r} does not exist{where}"
    if names & {"PermissionError", "PermissionDeniedError", "UnauthenticatedError"} or any(
            code in text for code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "(403)",
                                      "Forbidden")):
        return f"{url}: access denied by the object store{where} (check the credentials and their permissions)"
    if names & {"FileNotFoundError", "NotFoundError"} or "NoSuchKey" in text or "Not Found" in text:
        return f"{url}: not found{where}"
    if names & {"ClientError", "BotoCoreError", "OSError", "GenericError"} and is_remote(url):
        first = (str(chain[0]).strip().splitlines() or [type(chain[0]).__name__])[0][:200]
        return f"{url}: object store error{where} ({type(chain[0]).__name__}: {first})"
    return None


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a store failure inside the block into one `GenLIPUserError` line naming `url`."""
    try:
        yield
    except GenLIPUserError:
        raise
    except Exception as err:  # noqa: BLE001 - classified below, re-raised when it is not a store failure
        line = failure(url, err)
        if line is None:
            raise
        raise GenLIPUserError(line) from None


def _info(url: str, inner: str | None = None) -> dict[str, Any] | None:
    """fsspec's info of a URL (or of `inner`, a path in its filesystem), None when nothing is there. Unlike
    fsspec's `exists`/`isfile`, which answer False for any failure, a missing bucket, missing credentials or an
    endpoint that does not answer is one line naming the URL."""
    fs, path = _fs(url)
    with storage_errors(url):
        fs.invalidate_cache()
        try:
            return fs.info(inner if inner is not None else path)
        except FileNotFoundError as err:
            if "bucket does not exist" in str(err).lower():
                raise
            return None


def isfile(path: str) -> bool:
    if not is_remote(path):
        return os.path.isfile(os.path.expanduser(path))
    info = _info(path)
    return info is not None and info.get("type") == "file"


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(os.path.expanduser(path))
    return _info(path) is not None


def check_bucket(url: str) -> None:
    """The bucket (or container) of `url` exists and answers: else one line (missing bucket, credentials,
    endpoint). A missing key below it is not an error here."""
    _, inner = _fs(url)
    if _info(url, inner.split("/", 1)[0]) is None:
        with storage_errors(url):
            raise FileNotFoundError(f"NoSuchBucket: {url}")


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        with open(os.path.expanduser(path), "rb") as fh:
            return fh.read()
    fs, inner = _fs(path)
    with storage_errors(path):
        return bytes(fs.cat_file(inner))


def read_json(path: str) -> Any:
    """A JSON file, local or remote; unreadable JSON is one line naming it."""
    try:
        return json.loads(read_bytes(path))
    except ValueError as err:
        raise GenLIPUserError(f"cannot read {path!r}: {err}") from None


def write_bytes(url: str, data: bytes) -> None:
    fs, inner = _fs(url)
    with storage_errors(url):
        fs.pipe_file(inner, data)


def nan_to_null(value: Any) -> Any:
    """NaN -> None (JSON null), recursively through dicts, lists and tuples."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_null(v) for v in value]
    return value


def write_json(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> None:
    """The one JSON writer: `payload` as strict JSON (NaN as null; strict readers refuse NaN), whole or not at all.

    Many of these files mark work as done (an ingest unit, a finished comparison run, a complete dataset), so a
    half-written one must never exist: locally the text goes to a temporary name beside the file and is renamed
    over it (a process stopped meanwhile leaves the previous file, or none, and removes its temporary file when
    it can); to object storage it is one PUT, which the store shows only once complete."""
    data = json.dumps(nan_to_null(payload), indent=indent).encode("utf-8")  # fails before anything is touched
    path = os.fspath(path)
    if is_remote(path):
        write_bytes(path, data)
        return
    folder, name = os.path.split(os.path.abspath(path))
    temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")  # hidden: no glob of the real names sees it
    try:
        with open(temporary, "wb") as fh:
            fh.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def find(url: str, name: str) -> list[tuple[str, float]]:
    """(URL, modification time) of every object called `name` below `url`."""
    fs, inner = _fs(url)
    protocol = url.split("://", 1)[0]
    found = []
    with storage_errors(url):
        fs.invalidate_cache()
        for path, info in fs.find(inner, detail=True).items():
            if path.rsplit("/", 1)[-1] == name:
                modified = info.get("LastModified") or info.get("mtime") or info.get("updated")
                stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified or 0)
                found.append((f"{protocol}://{path}", stamp))
    return found


def listdir(url: str) -> list[str]:
    """Names directly below `url` ([] when nothing is there)."""
    fs, inner = _fs(url)
    with storage_errors(url):
        fs.invalidate_cache()
        if not fs.exists(inner):
            return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False))


def remove(url: str) -> None:
    """Delete an object or everything below a prefix (nothing there: nothing to do)."""
    fs, inner = _fs(url)
    with storage_errors(url):
        fs.invalidate_cache()
        if fs.exists(inner):
            fs.rm(inner, recursive=True)


def upload_file(local: str, url: str) -> None:
    fs, inner = _fs(url)
    with storage_errors(url):
        fs.put_file(local, inner)


@contextlib.contextmanager
def local_copy(path: str) -> Iterator[str]:
    """A local file with the bytes of `path`: the path itself when local, else a temporary download (removed
    after the block). Readers that need a real file (torch.load) go through it."""
    if not is_remote(path):
        yield path
        return
    fs, inner = _fs(path)
    folder = tempfile.mkdtemp(prefix="genlip-remote-")
    try:
        local = os.path.join(folder, os.path.basename(inner.rstrip("/")) or "object")
        with storage_errors(path):
            fs.get_file(inner, local)
        yield local
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def allow_http_endpoint() -> None:
    """Let litdata's obstore downloads use an http:// endpoint (on-prem stores, local test servers).

    litdata prefers obstore when it is installed and builds its S3 store from boto3's endpoint, but obstore
    refuses plain http unless told (`allow_http`), failing every chunk GET with "BadScheme". The endpoint is the
    user's own choice (AWS_ENDPOINT_URL), so it is allowed here when it is http://; with https nothing changes.
    tests/test_contracts.py pins the litdata option table this edits.
    """
    url = endpoint()
    if not url or not url.lower().startswith("http://"):
        return
    try:
        from litdata.streaming import downloader
    except ImportError:  # pragma: no cover - litdata is a dependency
        return
    options = getattr(downloader, "_OBSTORE_CLIENT_OPTIONS", None)
    if isinstance(options, dict):
        options["allow_http"] = "true"
    elif getattr(downloader, "_OBSTORE_AVAILABLE", False):
        raise GenLIPUserError(
            f"AWS_ENDPOINT_URL {url} is plain http, which this litdata's obstore downloads refuse: use an https "
            "endpoint, or uninstall obstore (pip uninstall obstore) so litdata reads through boto3"
        )


def streaming_dataset(split_dir: str, **kwargs: Any) -> Any:
    """`litdata.StreamingDataset(split_dir)` for random access (`dataset[i]`), local or remote: for a URL the http
    endpoint is allowed (`allow_http_endpoint`), a store failure is one line naming it, and whole chunks are
    downloaded. (litdata's default for remote random access fetches one item's byte range, computed for its row
    chunk layout; the columnar chunks its BinaryWriter writes for `genlip optimize --input` read back empty.)"""
    import litdata

    if not is_remote(split_dir):
        return litdata.StreamingDataset(split_dir, **kwargs)
    allow_http_endpoint()
    with storage_errors(split_dir):
        dataset = litdata.StreamingDataset(split_dir, **kwargs)
    return whole_chunks(dataset)


def whole_chunks(dataset: Any) -> Any:
    """`dataset` (a litdata StreamingDataset) set to download whole chunks when it is read by index from object
    storage (see `streaming_dataset`); a local dataset is returned as it is."""
    if getattr(getattr(dataset, "input_dir", None), "url", None):
        dataset._on_demand_bytes = False  # read when the cache is created (the public setter needs it to exist)
    return dataset
