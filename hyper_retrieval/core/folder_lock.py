"""One writer per output folder: the advisory lock train.py, eval.py and export.py hold on their output folder for
their whole run.

The lock is ``fcntl.flock`` on the file ``.<name>.lock`` *beside* the folder (in its parent), not inside it: the
folder need not exist yet, and what a command does to it (export.py replacing it whole, train.py --move-aside
renaming it) cannot take the lock away with it: the lock belongs to the folder's path. The lock file is never
deleted (deleting it would let one process lock the old file and another a new one); the kernel releases the lock
when its holder exits, however it ends, so the lock of a killed run is simply taken over, never trusted. The holder
writes its pid and command line into the file; a second writer stops at once with :class:`FolderBusyError` naming
them. Within one process the lock is re-entrant (a library call inside a command that holds it).

A command checks where it may write (hyper_retrieval.core.run_folders) *before* taking the lock, so that the lock
file is never created inside a folder it may not touch (another run's final/, a model, an input), and again once it
holds the lock, against what another process did meanwhile: ``lock_folder(out, check=...)`` does both.
"""

from __future__ import annotations

import fcntl
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HELD: dict[Path, list[int]] = {}  # lock file -> [fd, holders] of the locks this process holds


class FolderBusyError(RuntimeError):
    """Another process holds the folder's lock (the message names its pid and command line)."""


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``.<name>.lock`` in its parent (the folder's real path: every spelling of it,
    relative, absolute or through a link, shares one lock)."""
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.lock")


def _holder(fd: int) -> str:
    """What the lock file says of its holder: "pid N: command"; the holder writes it just after locking, so a moment
    is allowed for it (and for a dead earlier holder's words to be replaced)."""
    text = ""
    for _ in range(40):
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
        pid = text.split(":", 1)[0].removeprefix("pid ").strip()
        if pid.isdigit() and _alive(int(pid)):
            return text
        time.sleep(0.05)
    return text or "pid unknown"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class FolderLock:
    """A held lock on a folder (see the module's docstring); :meth:`release` or leaving a ``with`` block frees it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder).resolve()
        self.path = lock_path(self.folder)
        self._held = False
        self.checked: Any = None  # what lock_folder's check returned once the lock was held

    def acquire(self) -> FolderLock:
        if self.path in _HELD:  # this process holds it already
            _HELD[self.path][1] += 1
            self._held = True
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise FolderBusyError(f"{self.folder} is being written by another process ({holder}); wait for it to "
                                  "end or choose another folder") from None
        except BaseException:
            os.close(fd)
            raise
        command = shlex.join([Path(sys.executable).name, *sys.argv]).replace("\n", " ")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {command}\n".encode(), 0)
        _HELD[self.path] = [fd, 1]
        self._held = True
        return self

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        entry = _HELD.get(self.path)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _HELD[self.path]
            os.close(entry[0])  # closing the file releases the lock; the file stays

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def lock_folder(folder: str | os.PathLike, check: Callable[[], Any] | None = None) -> FolderLock:
    """Takes the lock on ``folder`` (creating its parent if need be) and returns it, held; FolderBusyError at once if
    another process holds it. ``check`` (raising where the command may not write) runs before the lock is taken and
    again once it is held (its value then in ``lock.checked``; the lock is let go if it raises). Use
    ``with lock_folder(out): ...``, or keep the returned lock for the process's life."""
    if check is not None:
        check()
    lock = FolderLock(folder).acquire()
    if check is not None:
        try:
            lock.checked = check()
        except BaseException:
            lock.release()
            raise
    return lock
