"""Is a local litdata split whole? One line naming the damaged file, before litdata reads a byte of it.

litdata reads a chunk by waiting until the file holds the bytes its index promises: a truncated chunk (a copy cut
short, a full disk) made `genlip eval` end in a 25-frame ChunkWaitTimeoutError after a 2 s wait, and `genlip fit`
in a 32-frame jsonargparse "Union subtypes" error (a compact vocabulary reads the captions while the config is
instantiated). Every place that opens a local split calls `check_split` first: an index.json that does not parse
or lists no chunks, a chunk file that is missing or not the size the index gives (uncompressed shards, what
`genlip optimize` writes) is a `GenLIPUserError` with the fix. Remote splits are checked by litdata as it streams.

Only the standard library is imported: the tokenizer's compact vocabulary (data/caption_coverage.py) uses it.
"""

from __future__ import annotations

import json
import os
import struct
from typing import Any

from genlip_lit.errors import GenLIPUserError
from genlip_lit.storage.paths import is_remote

FIX = "re-run `genlip optimize` to write the shards again"


def read_index(split_dir: str) -> dict:
    """The parsed index.json of a local split, or one line naming it when it is not a litdata index."""
    index = os.path.join(split_dir, "index.json")
    try:
        with open(index, encoding="utf-8") as fh:
            parsed = json.load(fh)
        chunks = parsed["chunks"]
        if not isinstance(chunks, list) or not chunks:
            raise ValueError("it lists no chunks")
        for chunk in chunks:
            if not isinstance(chunk.get("filename"), str) or not isinstance(chunk.get("chunk_bytes"), int):
                raise ValueError(f"a chunk entry without filename or chunk_bytes: {str(chunk)[:80]}")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:  # JSONDecodeError is a ValueError
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise GenLIPUserError(f"{index} is not a readable litdata index ({type(err).__name__}: {reason}); "
                              f"{FIX}") from err
    return parsed


def check_split(split_dir: object) -> None:
    """Refuse (one line, the file and the fix) a local split whose index or chunk files are damaged; a no-op for
    remote splits and for anything that is not a directory path (litdata's `Dir` of a remote split)."""
    if not isinstance(split_dir, str) or is_remote(split_dir):
        return
    parsed = read_index(split_dir)
    compressed = bool((parsed.get("config") or {}).get("compression"))
    index = os.path.join(split_dir, "index.json")
    for chunk in parsed["chunks"]:
        path = os.path.join(split_dir, chunk["filename"])
        try:
            size = os.path.getsize(path)
        except OSError:
            raise GenLIPUserError(f"{path}: a chunk {index} lists is missing; {FIX}") from None
        expected = chunk["chunk_bytes"]
        if not compressed and size != expected:  # (compressed chunks hold fewer bytes than the index counts)
            cut = "truncated" if size < expected else "longer than written"
            raise GenLIPUserError(f"{path} is damaged: {size:,} bytes where its index says {expected:,} ({cut}); "
                                  f"{FIX}")


def check_shard_dir(data_dir: object) -> None:
    """`check_split` on a local `genlip optimize` output: each of its splits (subdirectories with an index.json),
    or the directory itself when it is a split; a no-op for remote or missing directories (named elsewhere)."""
    if not isinstance(data_dir, str) or is_remote(data_dir):
        return
    path = os.path.expanduser(data_dir)
    if os.path.isfile(os.path.join(path, "index.json")):
        check_split(path)
        return
    if not os.path.isdir(path):
        return
    for name in sorted(os.listdir(path)):
        split = os.path.join(path, name)
        if os.path.isfile(os.path.join(split, "index.json")):
            check_split(split)


# what litdata raises reading a chunk whose bytes are damaged in place (a garbled header: struct.error; a chunk
# shorter than its index after all: its ChunkWaitTimeoutError, a FileNotFoundError)
READ_ERRORS = (struct.error, EOFError, UnicodeDecodeError, OSError)


def chunk_of(split_dir: object, index: Any) -> str:
    """The chunk file of a local split that holds sample `index` (litdata's ChunkedIndex names its chunk; a plain
    index is placed by the chunk sizes of index.json), else the split itself."""
    if not isinstance(split_dir, str) or is_remote(split_dir):
        return str(split_dir)
    try:
        chunks = read_index(split_dir)["chunks"]
        chunk = getattr(index, "chunk_index", None)
        if chunk is not None:
            chunk = int(chunk)
        else:
            remaining, chunk = int(index), 0
            while remaining >= int(chunks[chunk]["chunk_size"]):
                remaining -= int(chunks[chunk]["chunk_size"])
                chunk += 1
        return os.path.join(split_dir, chunks[chunk]["filename"])
    except (GenLIPUserError, IndexError, KeyError, TypeError, ValueError):
        return split_dir


def damaged_read(split_dir: object, index: Any, err: BaseException) -> GenLIPUserError:
    """The one line for a sample litdata could not read: the chunk, the sample, the reason, the fix."""
    reason = str(err).splitlines()[0][:120] if str(err) else ""
    return GenLIPUserError(f"{chunk_of(split_dir, index)}: sample {getattr(index, 'index', index)} cannot be read "
                           f"({type(err).__name__}: {reason}), the chunk is damaged; {FIX}")


def read_sample(dataset: Any, index: int, split_dir: object) -> Any:
    """`dataset[index]` of a litdata split, a damaged chunk turned into `damaged_read`'s one line."""
    try:
        return dataset[index]
    except READ_ERRORS as err:
        raise damaged_read(split_dir, index, err) from err
