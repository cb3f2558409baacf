"""On-disk cache of corpus embeddings and token stores, keyed by model identity, corpus content and encode settings.

An entry is a folder ``<key>.vectors/`` (embeddings: ``vectors.npy``, reopened memory-mapped, or ``vectors.npz``,
scipy CSR) or ``<key>.tokens/`` (a token store: ids, offsets, docs). Its ``manifest.json``, written last, records the
key and each file's size, sha256, shape and dtype; every read checks them, and an entry that fails is reported with
its path and computed again. Entries are written into a temporary folder renamed into place, so an interrupted run
never leaves a half-written one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from hyper_retrieval.core.atomic_files import (
    ManifestError,
    check_manifest,
    publish_folder,
    sweep_stale,
    temporary_sibling,
    write_manifest,
)
from hyper_retrieval.core.fingerprints import content_key

Embeddings = np.ndarray | sp.csr_matrix

logger = logging.getLogger(__name__)


class CacheEntryError(ValueError):
    """A cache entry that cannot be trusted: missing or unreadable manifest, wrong key, size, checksum or shape, or
    arrays that disagree with each other."""


def _array_facts(path: Path) -> dict[str, Any]:
    array = sp.load_npz(path) if path.suffix == ".npz" else np.load(path, mmap_mode="r")
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


def _save_entry(folder: Path, parts: Mapping[str, Any], arrays: Mapping[str, Embeddings],
                check: Callable[[dict[str, Embeddings]], None] | None = None) -> None:
    """Writes the arrays and, last, the manifest (key, and each file's size, sha256, shape and dtype) into a
    temporary folder renamed into place: an entry without a manifest was never finished. Where another process
    finished the same entry first, its copy is kept if it loads (they are computed alike)."""
    tmp = temporary_sibling(folder)
    for name, array in arrays.items():
        if sp.issparse(array):
            sp.save_npz(tmp / f"{name}.npz", sp.csr_matrix(array), compressed=False)  # zlib took most of the time
        else:
            np.save(tmp / f"{name}.npy", np.asarray(array), allow_pickle=False)
    write_manifest(tmp, {"key": parts}, _array_facts)

    def usable(existing: Path) -> bool:
        try:
            _load_entry(existing, parts, tuple(arrays), check)
            return True
        except CacheEntryError:
            return False

    publish_folder(tmp, folder, usable)


def _load_entry(folder: Path, parts: Mapping[str, Any], names: tuple[str, ...] = (),
                check: Callable[[dict[str, Embeddings]], None] | None = None) -> dict[str, Embeddings]:
    """The arrays of a finished entry, each checked against its manifest, then that it holds ``names``, then by
    ``check`` (which raises CacheEntryError where the arrays disagree); CacheEntryError says what is wrong."""
    try:
        manifest = check_manifest(folder)
    except ManifestError as e:
        raise CacheEntryError(str(e)) from None
    if manifest.get("key") != json.loads(json.dumps(parts, default=str)):
        raise CacheEntryError("its key differs from the one asked for")
    arrays = {}
    for name, facts in manifest["files"].items():
        path = folder / name
        try:
            array = sp.load_npz(path).tocsr() if path.suffix == ".npz" else np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:  # e.g. an object array, which would need a pickle
            raise CacheEntryError(f"{name} cannot be read as an array ({e})") from None
        if [list(array.shape), str(array.dtype)] != [facts.get("shape"), facts.get("dtype")]:
            raise CacheEntryError(f"{name} has shape {array.shape} {array.dtype}, the manifest says "
                                  f"{facts.get('shape')} {facts.get('dtype')}")
        arrays[path.stem] = array
    if missing := set(names) - set(arrays):
        raise CacheEntryError(f"it holds no {', '.join(sorted(missing))}")
    if check is not None:
        check(arrays)
    return arrays


def entry_folder(cache_dir: str | os.PathLike, kind: str, parts: Mapping[str, Any]) -> Path:
    """Where the entry of ``kind`` ("vectors", "tokens") for ``parts`` lives."""
    return Path(cache_dir) / f"{content_key(parts)}.{kind}"


def cached_entry(cache_dir: str | os.PathLike, kind: str, parts: Mapping[str, Any],
                 compute: Callable[[], Mapping[str, Embeddings]],
                 check: Callable[[dict[str, Embeddings]], None] | None = None) -> tuple[dict[str, Embeddings], bool]:
    """(arrays, hit): the named arrays cached for ``parts`` in ``<cache_dir>/<key>.<kind>/``, verified (size, sha256,
    shape, dtype, then ``check``, which raises CacheEntryError where the arrays disagree with each other or with
    what they stand for), else ``compute()`` saved there. A damaged entry, or anything else in its place, is
    reported with its path and recomputed, never used. Two processes computing one entry both end with the first
    finished copy. Temporary folders that killed processes left in ``cache_dir`` are swept. Dense arrays come back
    memory-mapped read-only, sparse ones as CSR."""
    folder = entry_folder(cache_dir, kind, parts)
    for path in sweep_stale(folder.parent):
        logger.info("removed %s, left by a process that did not finish", path)
    if folder.exists() or folder.is_symlink():
        try:
            if not folder.is_dir():
                raise CacheEntryError("it is not a folder")
            return _load_entry(folder, parts, check=check), True
        except CacheEntryError as e:
            logger.warning("cache entry %s: %s; computing it again", folder, e)
    computed = compute()
    _save_entry(folder, parts, computed, check)
    return _load_entry(folder, parts, tuple(computed), check), False


def cached_arrays(cache_dir: str | os.PathLike, parts: Mapping[str, Any],
                  compute: Callable[[], Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """A corpus's token store (ids, offsets, docs: see corpus_encoder.CorpusEncoder.window_store) for ``parts``."""
    return cached_entry(cache_dir, "tokens", parts, compute, check=check_token_store)


def check_token_store(arrays: Mapping[str, np.ndarray]) -> None:
    """A token store's offsets run from 0 to the length of its ids, one more than its windows (docs, if stored)."""
    if not {"ids", "offsets"} <= set(arrays):
        raise CacheEntryError(f"a token store needs ids and offsets, the entry has {sorted(arrays)}")
    ids, offsets = arrays["ids"], arrays["offsets"]
    if (offsets.ndim != 1 or len(offsets) < 2 or offsets[0] != 0 or offsets[-1] != len(ids)
            or (np.diff(offsets) < 0).any()):
        raise CacheEntryError(f"its offsets ({len(offsets)}) do not cut its {len(ids)} token ids into windows")
    if "docs" in arrays and len(arrays["docs"]) != len(offsets) - 1:
        raise CacheEntryError(f"{len(arrays['docs'])} document rows for {len(offsets) - 1} windows")


def check_shard_vectors(start: int, end: int) -> Callable[[Mapping[str, Embeddings]], None]:
    """The check of a corpus shard's cached vectors: one document row per vector, non-decreasing, covering every row
    of [start, end) (each passage has at least one window)."""

    def check(arrays: Mapping[str, Embeddings]) -> None:
        if not {"vectors", "docs"} <= set(arrays):
            raise CacheEntryError(f"a shard's entry needs vectors and docs, it has {sorted(arrays)}")
        vectors, docs = arrays["vectors"], np.asarray(arrays["docs"])
        if vectors.shape[0] != len(docs):
            raise CacheEntryError(f"{vectors.shape[0]} vectors for {len(docs)} document rows")
        if docs.ndim != 1 or (np.diff(docs) < 0).any() or not np.array_equal(np.unique(docs), np.arange(start, end)):
            raise CacheEntryError(f"its document rows do not cover rows {start}-{end} of the corpus in order")

    return check
