"""Files that a reader sees whole or not at all, and the checksums that say a file is what was written.

- :func:`atomic_file` writes a file under a temporary name in its folder and renames it into place, so a reader (or a
  memory map already open on the old file) never sees a half-written one.
- :func:`file_digest` is the sha256 every manifest, saved index and checkpoint records.
- :func:`content_key` is the one way a key (a JSON-able mapping) is hashed into a name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def content_key(parts: Mapping[str, Any], length: int = 24) -> str:
    """The first ``length`` hex digits of the sha256 of ``parts`` as sorted JSON (values JSON cannot hold as str)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` to write; when the block ends without an error the file is flushed to
    disk and renamed to ``path`` (replacing any old file: readers that opened the old one keep reading it), else
    removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
