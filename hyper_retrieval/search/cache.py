"""On-disk cache of corpus embeddings and token stores, keyed by model identity, corpus content and encode settings.

An entry is a folder ``<key>.vectors/`` (embeddings: ``vectors.npy``, reopened memory-mapped, or ``vectors.npz``,
scipy CSR) or ``<key>.tokens/`` (a token store: ids, offsets, docs). Its ``manifest.json``, written last, records the
key and each file's size, sha256, shape and dtype; every read checks them, and an entry that fails is reported with
its path and computed again. Entries are written into a temporary folder renamed into place, so an interrupted run
never leaves a half-written one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hyper_retrieval.core.atomic_files import (
    ManifestError,
    check_manifest,
    content_key,
    file_digest,
    publish_folder,
    sweep_stale,
    temporary_sibling,
    write_manifest,
)

Embeddings = np.ndarray | sp.csr_matrix

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
logger = logging.getLogger(__name__)


def path_fingerprint(name_or_path: str | os.PathLike) -> str:
    """Identity of a model or data location by content: for a folder, the sha256 of its weight files and
    config.json; for a file, its sha256; otherwise (a Hub id, a fingerprint string) the string itself. A copied or
    moved folder keeps its identity."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted({f for pattern in (*WEIGHT_PATTERNS, "config.json") for f in path.glob(pattern)})
        return "files:" + ",".join(f"{f.name}:{file_digest(f)[:24]}" for f in files)
    if path.is_file():
        return f"file:{file_digest(path)[:24]}"
    return str(name_or_path)


def passage_encoder_fingerprint(model: Any) -> str | None:
    """Identity of what ``encode_corpus`` computes for a HyperRetrieverModel: the tensors of the encoder that reads
    passages and the settings that shape passage vectors. Models that share a passage encoder (e.g. the frozen copy
    of the benchmark's systems) then share cached corpus embeddings. None for a model without such an encoder."""
    encoder = getattr(model, "passage_encoder", None) or getattr(model, "query_encoder", None)
    if encoder is None:
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    shape = {k: getattr(model.config, k, None) for k in ("representation", "pooling", "normalize", "max_seq_length")}
    digest.update(json.dumps(shape, sort_keys=True).encode())
    return "passage-encoder:" + digest.hexdigest()[:24]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer by content (its full serialisation for fast tokenizers), not by where it was loaded
    from, so every model trained from one backbone shares a corpus's cached token ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation and padding a call leaves set: they change no token id
        text = json.dumps({k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")},
                          sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return f"{type(tokenizer).__name__}:" + hashlib.sha256(text.encode()).hexdigest()[:24]


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
