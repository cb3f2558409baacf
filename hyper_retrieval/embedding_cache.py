"""On-disk cache of corpus embeddings, keyed by model identity, corpus identity and encode settings.

Dense embeddings are stored as ``<key>.npy`` and reopened memory-mapped; sparse ones as ``<key>.npz`` (scipy CSR).
``<key>.json`` beside them records what the key was made of. Files are written to a temporary name and renamed, so
an interrupted run never leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

Embeddings = np.ndarray | sp.csr_matrix

WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


def path_fingerprint(name_or_path: str | os.PathLike) -> str:
    """Identity of a model or data location: for a folder, the name, size and mtime of its weight files and
    config.json; for a file, its size and mtime; otherwise (a Hub id, a fingerprint string) the string itself."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted({f for pattern in (*WEIGHT_PATTERNS, "config.json") for f in path.glob(pattern)})
        return f"{path.resolve()}:" + ",".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    if path.is_file():
        return f"{path.resolve()}:{path.stat().st_size}:{path.stat().st_mtime_ns}"
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
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return f"{type(tokenizer).__name__}:" + hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_arrays(cache_dir: str | os.PathLike, parts: Mapping[str, Any],
                  compute: Callable[[], Mapping[str, np.ndarray]]) -> tuple[dict[str, np.ndarray], bool]:
    """(arrays, hit): named arrays (e.g. a corpus's token store: ids, offsets, docs) for ``parts``, from
    ``<key>.tokens/<name>.npy`` reopened memory-mapped, else ``compute()`` saved there (into a temporary folder,
    renamed, so an interrupted run leaves no half-written entry)."""
    folder = Path(cache_dir) / f"{cache_key(parts)}.tokens"
    hit = folder.is_dir()
    if not hit:
        arrays = compute()
        tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
        tmp.mkdir(parents=True, exist_ok=True)
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        (tmp / "key.json").write_text(json.dumps(parts, indent=1, sort_keys=True, default=str))
        os.replace(tmp, folder)
    return {f.stem: np.load(f, mmap_mode="r") for f in sorted(folder.glob("*.npy"))}, hit


def cache_key(parts: Mapping[str, Any]) -> str:
    """A short hex digest of the JSON form of ``parts`` (keys sorted)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def cached_embeddings(cache_dir: str | os.PathLike, parts: Mapping[str, Any],
                      compute: Callable[[], Embeddings]) -> tuple[Embeddings, bool]:
    """Returns (embeddings, hit): the cached array for ``parts`` if present, else ``compute()`` saved then reloaded.

    Dense arrays come back memory-mapped read-only (n_docs, dim); sparse ones as CSR (n_docs, vocab).
    """
    cache_dir = Path(cache_dir)
    key = cache_key(parts)
    dense, sparse = cache_dir / f"{key}.npy", cache_dir / f"{key}.npz"
    for path in (dense, sparse):
        if path.exists():
            return _load(path), True
    embeddings = compute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = sparse if sp.issparse(embeddings) else dense
    tmp = target.with_name(f".{key}.{os.getpid()}.tmp{target.suffix}")
    if sp.issparse(embeddings):
        sp.save_npz(tmp, sp.csr_matrix(embeddings))
    else:
        np.save(tmp, np.asarray(embeddings))
    (cache_dir / f"{key}.json").write_text(json.dumps(parts, indent=1, sort_keys=True, default=str))
    os.replace(tmp, target)
    return _load(target), False


def _load(path: Path) -> Embeddings:
    return sp.load_npz(path).tocsr() if path.suffix == ".npz" else np.load(path, mmap_mode="r")
