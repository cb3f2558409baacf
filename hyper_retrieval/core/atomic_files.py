"""Files that a reader sees whole or not at all, and the checksums that say a file is what was written.

- :func:`atomic_file` writes a file under a temporary name in its folder and renames it into place, so a reader (or a
  memory map already open on the old file) never sees a half-written one.
- :func:`file_digest` is the sha256 every manifest, saved index and checkpoint records.
- :func:`write_manifest` / :func:`check_manifest`: a folder's ``manifest.json``, written last, records each file's
  size and sha256 (and any facts the caller adds); a folder whose manifest is missing, lists no file or disagrees
  with a file was never finished or was damaged since. Cache entries and checkpoints use them.
- :func:`publish_folder` renames a finished temporary folder into place; :func:`swap_folder` replaces a folder so
  that readers see the old or the new one; :func:`sweep_stale` removes the temporary leftovers of killed processes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
PROCESS_STARTED = time.time()  # when this module was first imported: temporary folders older than this are stale


class ManifestError(ValueError):
    """A folder that cannot be trusted: its manifest is missing, unreadable or empty, or a file disagrees with it."""


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


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


def write_manifest(folder: Path, fields: Mapping[str, Any],
                   facts: Callable[[Path], Mapping[str, Any]] | None = None) -> None:
    """Writes ``folder/manifest.json``: ``fields`` and, under "files", every file below ``folder`` (relative path ->
    bytes, sha256 and ``facts(path)``). Call it last, when every file is written."""
    files = {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_digest(p),
                                          **(facts(p) if facts else {})}
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MANIFEST}
    (folder / MANIFEST).write_text(json.dumps({**fields, "files": files}, indent=1, sort_keys=True, default=str))


def check_manifest(folder: Path, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest of ``folder`` once every file it lists has its size and sha256 and every ``required`` file is
    listed; otherwise ManifestError saying what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if not isinstance(files, dict) or not files:
            raise ValueError("it lists no file")
        sizes = {name: (int(facts["bytes"]), str(facts["sha256"])) for name, facts in files.items()}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ManifestError(f"no usable {MANIFEST} ({type(e).__name__}: {e})") from None
    for name in required:
        if name not in files:
            raise ManifestError(f"{MANIFEST} does not list {name}")
    for name, (size, checksum) in sizes.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != size:
            raise ManifestError(f"{name} is missing or has the wrong size")
        if file_digest(path) != checksum:
            raise ManifestError(f"{name} does not match its checksum")
    return manifest


def temporary_sibling(folder: Path) -> Path:
    """A fresh temporary folder beside ``folder``, named for it and this process (see :func:`sweep_stale`)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish_folder(tmp: Path, folder: Path, usable: Callable[[Path], bool]) -> None:
    """Renames the finished ``tmp`` to ``folder``. Where ``folder`` already exists (another process finished the
    same work first, or an old damaged copy is there), a ``usable`` one is kept and ``tmp`` dropped; anything else
    there (a damaged folder, a plain file) is replaced."""
    for _ in range(3):
        if folder.is_dir() and usable(folder):
            shutil.rmtree(tmp, ignore_errors=True)
            return
        if folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
        elif folder.exists() or folder.is_symlink():
            folder.unlink()
        try:
            os.replace(tmp, folder)
            return
        except OSError as e:  # another process renamed its copy in between: look again
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
    raise OSError(f"{folder}: could not be replaced (other processes keep writing it)")


def swap_folder(save: Callable[[Path], None], folder: str | os.PathLike) -> None:
    """Runs ``save(tmp)`` into a temporary sibling of ``folder``, then swaps it in: readers see the old or the new.
    Where ``save`` fails (a full disk), the temporary folder is removed and ``folder`` is left as it was."""
    folder = Path(folder)
    tmp = temporary_sibling(folder)
    try:
        save(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, folder)


def replace_folder(finished: Path, folder: Path) -> None:
    """Puts the finished folder ``finished`` in place of ``folder``: an earlier ``folder`` is moved aside first and
    removed only once the new one is in place (put back if the new one cannot be), so a crash leaves one of the two
    whole, never neither."""
    old = folder.with_name(f".{folder.name}.{os.getpid()}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    try:
        os.replace(finished, folder)
    except BaseException:
        if old.exists():
            os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)


_SWEPT: set[Path] = set()  # folders already swept by this process


def sweep_stale(parent: Path) -> list[Path]:
    """Removes the temporary folders and files (``.<name>.<pid>.tmp``) under ``parent`` last written before this
    process started: what killed processes left. Those of live writers are newer and stay. Returns what went. Each
    folder is swept once per process: what is stale was already there when it started."""
    if not parent.is_dir() or parent.resolve() in _SWEPT:
        return []
    _SWEPT.add(parent.resolve())
    swept = []
    for path in parent.glob(".*.tmp"):
        try:
            if path.stat().st_mtime < PROCESS_STARTED:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
                swept.append(path)
        except OSError:  # gone already: another process swept it
            continue
    return swept
