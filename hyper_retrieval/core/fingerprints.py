"""Identity by content, in one place: every fingerprint and cache key here is a sha256 cut to KEY_DIGITS hex digits,
prefixed by what it identifies.

Caches are named by these keys and record them, so changing how one is computed (or its length) makes old entries
misses, recomputed and never misread. Checksums of whole files (full sha256, in manifests and saved indexes) are
:func:`hyper_retrieval.core.atomic_files.file_digest`; the 63-bit ids that the training step compares on the device
are :func:`hyper_retrieval.training.examples.key_ids`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from hyper_retrieval.core.atomic_files import file_digest

KEY_DIGITS = 24  # 96 bits: no collision among the entries of any cache this project writes
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt")


def short_digest(digest: Any) -> str:
    """The first KEY_DIGITS hex digits of a finished hashlib object."""
    return digest.hexdigest()[:KEY_DIGITS]


def content_key(parts: Any) -> str:
    """The key of a JSON-able value (a cache key's mapping, a split's queries and judgements): its sorted JSON
    hashed (values JSON cannot hold as str)."""
    return short_digest(hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()))


def path_fingerprint(name_or_path: str | os.PathLike) -> str:
    """Identity of a model or data location by content: for a folder, its weight files and config.json, each by
    sha256; for a file, its sha256; otherwise (a Hub id, a fingerprint string) the string itself. A copied or moved
    folder keeps its identity."""
    path = Path(name_or_path)
    if path.is_dir():
        files = sorted({f for pattern in (*WEIGHT_PATTERNS, "config.json") for f in path.glob(pattern)})
        return "files:" + ",".join(f"{f.name}:{file_digest(f)[:KEY_DIGITS]}" for f in files)
    if path.is_file():
        return f"file:{file_digest(path)[:KEY_DIGITS]}"
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
    return "passage-encoder:" + short_digest(digest)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer by content (its full serialisation for fast tokenizers), not by where it was loaded
    from, so every model trained from one backbone shares a corpus's cached token ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # without the truncation and padding a call leaves set: they change no token id
        text = json.dumps({k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")},
                          sort_keys=True)
    else:
        text = json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return f"{type(tokenizer).__name__}:" + short_digest(hashlib.sha256(text.encode()))
