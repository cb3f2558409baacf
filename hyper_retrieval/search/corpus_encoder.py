"""Encoding a corpus into a store of vector shards, cached shard by shard, with long passages read in windows.

Models follow BEIR's interface: ``encode_corpus(list[{"title", "text"}], batch_size=, show_progress_bar=)`` -> (n,
dim) array or (n, vocab) CSR, and ``config.representation`` in {"dense", "sparse"}. A maximum length goes to the
encode methods as ``max_length=`` when they name that parameter; a HypeR model (one with ``tokenize_windows``) gets
it as its window length. The model's config is never changed.

Long passages (:class:`PassageWindows`): FirstP reads a passage's first window only (truncation); MaxP reads
every window (``HyperRetrieverModel.tokenize_windows``) and scores a document by its best window. Window vectors
are cached like passage vectors, keyed by the window settings.

Past one machine: a corpus is encoded in shards (``shards.py``), each cached as an entry of its own, so that several
processes split the work (:meth:`CorpusEncoder.encode_shards`) and a killed run resumes shard by shard; a search
reads the shards back as one store (:meth:`CorpusEncoder.encode`).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from hyper_retrieval.core.fingerprints import tokenizer_fingerprint
from hyper_retrieval.core.types import WINDOW_MODES, WindowMode
from hyper_retrieval.data.beir import Corpus
from hyper_retrieval.search.cache import Embeddings, cached_arrays, cached_entry, check_shard_vectors, entry_folder
from hyper_retrieval.search.shards import Shard, ShardStore, shard_ranges
from modeling_hyper import HyperConfig


@dataclass(frozen=True)
class PassageWindows:
    """How a passage longer than the passage length is read. The window length is the encoder's max_length."""

    mode: WindowMode = "first"  # first: FirstP, the first window only; max: MaxP, best of all windows
    stride: int | None = None  # text tokens between window starts (None: half a window); MaxP only

    def __post_init__(self) -> None:
        if self.mode not in WINDOW_MODES:
            raise ValueError(f"windows mode {self.mode!r}: expected one of {WINDOW_MODES}")
        if self.stride is not None and (self.mode != "max" or self.stride < 1):
            raise ValueError(f"window stride {self.stride}: a positive stride applies to MaxP (mode 'max') only")


FIRST_WINDOW = PassageWindows()  # FirstP, the default


def is_hyper_model(model: Any) -> bool:
    """Whether ``model`` is a HyperRetrieverModel: this project's class, or the same model loaded as a Hub
    repository's remote code (its own class, the same config model_type)."""
    return getattr(getattr(model, "config", None), "model_type", None) == HyperConfig.model_type


@dataclass
class CorpusEncoder:
    """A BEIR-style model's corpus vectors as a :class:`ShardStore` (one row per window, each row's document).

    Vectors are cached in ``cache_dir`` (None: no cache) under the model's ``model_fingerprint``, the corpus's
    fingerprint and the encode and window settings. MaxP needs a model with ``tokenize_windows``.
    """

    model: Any
    model_fingerprint: str
    batch_size: int = 64
    max_length: int | None = None  # the passage (window) length; None: the model's own setting
    cache_dir: Path | None = None
    show_progress: bool = True
    shard_docs: int = 50_000  # documents per shard: read, encoded and cached one shard at a time
    windows: PassageWindows = FIRST_WINDOW
    representation: str = field(init=False)  # "dense" or "sparse", from the model's config
    encode_kwargs: dict[str, Any] = field(init=False)  # max_length for models whose encode methods take it

    def __post_init__(self) -> None:
        self.representation = getattr(self.model.config, "representation", "dense")
        if self.representation not in ("dense", "sparse"):
            raise ValueError(f"config.representation must be 'dense' or 'sparse', got {self.representation!r}")
        if self.windows.mode == "max" and not self._reads_windows():
            raise ValueError(f"MaxP windows need a model with tokenize_windows (a HyperRetrieverModel); "
                             f"{type(self.model).__name__} has none: use windows mode 'first'")
        self.encode_kwargs = {}
        if self._reads_windows():
            self.max_length = self.max_length or self.model.config.max_seq_length
        elif "max_length" in inspect.signature(self.model.encode_corpus).parameters:
            self.encode_kwargs = {"max_length": self.max_length} if self.max_length else {}
        elif self.max_length:
            raise ValueError("the model's encoders take no max_length and it reads no windows (tokenize_windows)")
        if self.windows.stride is not None and self.max_length and self.windows.stride > self.max_length:
            raise ValueError(f"window stride {self.windows.stride} (--window-stride) exceeds the window of "
                             f"{self.max_length} tokens: passage text between windows would never be read")
        if self._reads_windows() and self.max_length:
            limit = self.model.max_window_length()
            if self.max_length > limit:
                raise ValueError(f"max_length={self.max_length} (the window length) exceeds the backbone's limit "
                                 f"of {limit} positions; use at most that")

    def _reads_windows(self) -> bool:
        """Whether the model tokenizes passages into windows itself: a HyperRetrieverModel does, a BEIR-style model
        encodes whole texts (its ``encode_corpus`` may take a ``max_length``)."""
        return is_hyper_model(self.model)

    def encode(self, corpus: Corpus) -> tuple[ShardStore, bool]:
        """The corpus's window vectors as a store of shards (document order) and whether the cache held every shard.
        A pooled corpus is its components' shards end to end: it reuses their entries and adds none of its own."""
        if corpus.components:
            parts, hits = zip(*(self.encode(c) for c in corpus.components), strict=True)
            return ShardStore.concatenate(parts, [len(c) for c in corpus.components]), all(hits)
        shards, hits = zip(*self._shards(corpus, 0, 1), strict=True)
        return ShardStore(shards), all(hits)

    def encode_shards(self, corpus: Corpus, rank: int = 0, world: int = 1) -> list[bool]:
        """Encodes the shards process ``rank`` of ``world`` owns (shards rank, rank + world, ...; a pool's components
        each split so), skipping those the cache holds; returns each owned shard's cache hit. Under several
        processes, call it on every process, wait for all, then :meth:`encode` finds every shard cached."""
        if corpus.components:
            return [hit for c in corpus.components for hit in self.encode_shards(c, rank, world)]
        if world > 1 and self.cache_dir is None:
            raise ValueError("encoding a corpus over several processes writes its shards to the cache: set cache_dir")
        return [hit for _, hit in self._shards(corpus, rank, world)]

    def _shards(self, corpus: Corpus, rank: int, world: int) -> list[tuple[Shard, bool]]:
        """Shards rank, rank + world, ... of a corpus (not a pool), each with its cache hit."""
        ranges = shard_ranges(len(corpus), self.shard_docs)[rank::world]
        label = "corpus shards" + (f" (process {rank})" if world > 1 else "")
        return [self._shard(corpus, start, end) for start, end in
                tqdm(ranges, desc=label, unit="shard", disable=not self.show_progress or len(ranges) < 2)]

    def _shard(self, corpus: Corpus, start: int, end: int) -> tuple[Shard, bool]:
        """Rows [start, end) of the corpus: their window vectors and each one's document row, from the cache when
        it holds them (verified), else encoded (token-length-sorted batches) and cached as one entry."""
        settings = {"model": self.model_fingerprint, "corpus": corpus.fingerprint, "n_docs": len(corpus),
                    "rows": [start, end], "max_length": self.max_length, "representation": self.representation,
                    **self._window_key()}

        def compute() -> dict[str, Embeddings]:
            if not self._reads_windows():  # a plain BEIR model: one vector per passage
                vectors = self.model.encode_corpus(corpus.read_rows(np.arange(start, end)),
                                                   batch_size=self.batch_size, show_progress_bar=self.show_progress,
                                                   **self.encode_kwargs)
                vectors = sp.csr_matrix(vectors) if self.representation == "sparse" else np.asarray(vectors,
                                                                                                     np.float32)
                return {"vectors": vectors, "docs": np.arange(start, end)}
            store = self.window_store(corpus, start, end)
            vectors = self.model.encode_tokenized(store["ids"], store["offsets"], False, self.batch_size,
                                                  self.show_progress)[0]
            return {"vectors": vectors, "docs": np.asarray(store["docs"])}

        if self.cache_dir is None:
            arrays = compute()
            return Shard(arrays["vectors"], arrays["docs"]), False
        arrays, hit = cached_entry(self.cache_dir, "vectors", settings, compute, check_shard_vectors(start, end))
        return Shard(entry_folder(self.cache_dir, "vectors", settings), np.array(arrays["docs"])), hit

    def _window_key(self) -> dict[str, Any]:
        """The cache key's window part: none for FirstP, whose entries are those of one vector per passage."""
        return {} if self.windows.mode == "first" else {"windows": {"mode": "max", "stride": self.windows.stride}}

    def window_store(self, corpus: Corpus, start: int = 0, end: int | None = None) -> dict[str, np.ndarray]:
        """Rows [start, end) of the corpus as a token store of windows {"ids", "offsets", "docs"} (see
        tokenize_windows; docs are corpus rows), cached on disk (when there is a cache) by tokenizer content, window
        settings, corpus and rows: re-encoding a corpus after each training run skips tokenization. FirstP's has
        one window per passage (its docs are not stored)."""
        end = len(corpus) if end is None else end
        parts = {"tokenizer": tokenizer_fingerprint(self.model.tokenizer), "corpus": corpus.fingerprint,
                 "n_docs": len(corpus), "rows": [start, end], "max_seq_length": self.max_length,
                 **self._window_key()}
        first_only = self.windows.mode == "first"

        def tokenize() -> dict[str, np.ndarray]:
            ids, offsets, docs = self.model.tokenize_windows(corpus.read_rows(np.arange(start, end)), self.max_length,
                                                             self.windows.stride, first_only)
            return {"ids": ids, "offsets": offsets} | ({} if first_only else {"docs": docs + start})

        store = cached_arrays(self.cache_dir, parts, tokenize)[0] if self.cache_dir else tokenize()
        return store if "docs" in store else store | {"docs": np.arange(start, end)}
