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
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

Embeddings = np.ndarray | sp.csr_matrix

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")
MANIFEST = "manifest.json"
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


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short hex digest of the JSON form of ``parts`` (keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes (hex)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class CacheEntryError(ValueError):
    """A cache entry that cannot be trusted: missing or unreadable manifest, wrong key, size, checksum or shape."""


def _save_entry(folder: Path, parts: Mapping[str, Any], arrays: Mapping[str, Embeddings]) -> None:
    """Writes the arrays and, last, the manifest (key, and each file's size, sha256, shape and dtype) into a
    temporary folder renamed into place: an entry without a manifest was never finished."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = {}
    for name, array in arrays.items():
        if sp.issparse(array):
            path = tmp / f"{name}.npz"
            sp.save_npz(path, sp.csr_matrix(array), compressed=False)  # zlib took most of the encoding time
        else:
            path = tmp / f"{name}.npy"
            np.save(path, np.asarray(array))
        files[path.name] = {"bytes": path.stat().st_size, "sha256": file_digest(path),
                            "shape": list(array.shape), "dtype": str(array.dtype)}
    (tmp / MANIFEST).write_text(json.dumps({"key": parts, "files": files}, indent=1, sort_keys=True, default=str))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _load_entry(folder: Path, parts: Mapping[str, Any]) -> dict[str, Embeddings]:
    """The arrays of a finished entry, each checked against its manifest; CacheEntryError says what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CacheEntryError(f"no readable {MANIFEST} ({e})") from None
    if manifest.get("key") != json.loads(json.dumps(parts, default=str)):
        raise CacheEntryError("its key differs from the one asked for")
    arrays = {}
    for name, facts in files.items():
        path = folder / name
        if not path.is_file() or path.stat().st_size != facts["bytes"]:
            raise CacheEntryError(f"{name} is missing or has the wrong size")
        if file_digest(path) != facts["sha256"]:
            raise CacheEntryError(f"{name} does not match its checksum")
        array = sp.load_npz(path).tocsr() if path.suffix == ".npz" else np.load(path, mmap_mode="r")
        if list(array.shape) != facts["shape"] or str(array.dtype) != facts["dtype"]:
            raise CacheEntryError(f"{name} has shape {array.shape} {array.dtype}, the manifest says "
                                  f"{facts['shape']} {facts['dtype']}")
        arrays[path.stem] = array
    return arrays


def entry_folder(cache_dir: str | os.PathLike, kind: str, parts: Mapping[str, Any]) -> Path:
    """Where the entry of ``kind`` ("vectors", "tokens") for ``parts`` lives."""
    return Path(cache_dir) / f"{cache_key(parts)}.{kind}"


def cached_entry(cache_dir: str | os.PathLike, kind: str, parts: Mapping[str, Any],
                 compute: Callable[[], Mapping[str, Embeddings]]) -> tuple[dict[str, Embeddings], bool]:
    """(arrays, hit): the named arrays cached for ``parts`` in ``<cache_dir>/<key>.<kind>/``, verified (size, sha256,
    shape, dtype), else ``compute()`` saved there. A damaged entry is reported with its path and recomputed, never
    used. Dense arrays come back memory-mapped read-only, sparse ones as CSR."""
    folder = entry_folder(cache_dir, kind, parts)
    if folder.is_dir():
        try:
            return _load_entry(folder, parts), True
        except CacheEntryError as e:
            logger.warning("cache entry %s: %s; computing it again", folder, e)
    _save_entry(folder, parts, compute())
    return _load_entry(folder, parts), False


def cached_arrays(cache_dir: str | os.PathLike, parts: Mapping[str, Any],
                  compute: Callable[[], Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """A corpus's token store (ids, offsets, docs: see retrieval.ModelSearcher.window_store) for ``parts``."""
    return cached_entry(cache_dir, "tokens", parts, compute)
