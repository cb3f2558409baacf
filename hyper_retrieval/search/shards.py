"""A corpus's vectors in shards, read back as one store without holding more than one shard in memory.

Shard ``i`` of a corpus of n documents is the row range ``[i * shard_docs, min((i + 1) * shard_docs, n))``. Each
shard is encoded on its own (see corpus_encoder.CorpusEncoder.encode_shards) and cached as an entry of its own: under
several processes (``accelerate launch`` / ``torchrun``) each encodes its share, and a run killed mid-way keeps every
finished shard. :class:`ShardStore` lays the shards end to end; search reads it chunk by chunk (index.DenseIndex).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from hyper_retrieval.core.fingerprints import short_digest
from hyper_retrieval.search.cache import Embeddings


def shard_ranges(n_docs: int, shard_docs: int) -> list[tuple[int, int]]:
    """The row ranges [start, end) of the shards of a corpus of ``n_docs`` documents, ``shard_docs`` each."""
    if shard_docs < 1:
        raise ValueError(f"shard_docs={shard_docs}: expected >= 1 document per shard")
    return [(start, min(start + shard_docs, n_docs)) for start in range(0, n_docs, shard_docs)]


@dataclass(frozen=True)
class Shard:
    """One shard's vectors, (n, dim) or CSR (n, vocab): in memory, or the cache-entry folder holding ``vectors.npy``
    (dense, memory-mapped at each read) or ``vectors.npz`` (sparse). ``doc`` (n,) is each vector's document row."""

    source: Embeddings | Path
    doc: np.ndarray

    def open(self) -> Embeddings:
        if not isinstance(self.source, Path):
            return self.source
        dense = self.source / "vectors.npy"
        return np.load(dense, mmap_mode="r") if dense.exists() else sp.load_npz(self.source / "vectors.npz").tocsr()

    def shape(self) -> tuple[tuple[int, int], bool]:
        """((n, dim or vocab), sparse), from the array or the file's header, without reading a shard on disk."""
        if not isinstance(self.source, Path):
            return self.source.shape, sp.issparse(self.source)
        dense = self.source / "vectors.npy"
        if dense.exists():
            return np.load(dense, mmap_mode="r").shape, False
        with np.load(self.source / "vectors.npz") as archive:  # scipy's npz keeps the shape as its own member
            return tuple(int(d) for d in archive["shape"]), True


class ShardStore:
    """Shards laid end to end: row ``r`` of the store is vector ``r - starts[i]`` of shard ``i``.

    Nothing is loaded when the store is made; :meth:`chunks` and :meth:`take` open one shard at a time (memory-mapped
    when it is on disk) and copy only the rows asked for. :meth:`load` gives everything as one array, for callers
    that hold a corpus in memory anyway.
    """

    def __init__(self, shards: Sequence[Shard]) -> None:
        if not shards:
            raise ValueError("a shard store needs at least one shard")
        self.shards = list(shards)
        self.starts = np.concatenate([[0], np.cumsum([len(s.doc) for s in self.shards])]).astype(np.int64)
        (_, self.dim), self.sparse = self.shards[0].shape()

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int, int]:
        return len(self), self.dim

    @cached_property
    def doc(self) -> np.ndarray:
        """(n_vectors,) each vector's document row (non-decreasing)."""
        return np.concatenate([np.asarray(s.doc, dtype=np.int64) for s in self.shards])

    def chunks(self, rows: int) -> Iterator[tuple[int, Embeddings]]:
        """(first row, block) in store order: blocks of at most ``rows`` vectors, float32 dense or CSR, copied out
        of one open shard at a time."""
        for shard, start in zip(self.shards, self.starts[:-1], strict=True):
            vectors = shard.open()
            for offset in range(0, vectors.shape[0], rows):
                block = vectors[offset: offset + rows]
                yield int(start + offset), block.copy() if self.sparse else np.array(block, dtype=np.float32)
            del vectors

    def _by_shard(self, flat: np.ndarray) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """For store rows ``flat`` (m,): (shard index, the positions in ``flat`` of its rows, those rows within the
        shard), one shard at a time."""
        shard_of = np.searchsorted(self.starts, flat, side="right") - 1
        for i in np.unique(shard_of).tolist():
            where = np.flatnonzero(shard_of == i)
            yield i, where, flat[where] - self.starts[i]

    def take(self, rows: np.ndarray) -> Embeddings:
        """The vectors of store rows (any shape of int array), in that order: (*rows.shape, dim) float32 for dense
        vectors, CSR (len(rows), vocab) for sparse ones."""
        rows = np.asarray(rows, dtype=np.int64)
        flat = rows.reshape(-1)
        if self.sparse:
            parts, positions = [], []
            for i, where, local in self._by_shard(flat):
                parts.append(self.shards[i].open()[local])
                positions.append(where)
            return sp.vstack(parts, format="csr")[np.argsort(np.concatenate(positions), kind="stable")]
        out = np.empty((len(flat), self.dim), dtype=np.float32)  # one gather per shard, straight into place
        for i, where, local in self._by_shard(flat):
            out[where] = self.shards[i].open()[local]
        return out.reshape(*rows.shape, self.dim)

    def inner_products(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(n, m) float32: the inner product of query i (queries (n, dim)) with the stored vector of rows[i, j] (rows
        (n, m) store rows). Dense stores only. Rows are gathered one shard at a time, shards in parallel threads
        (numpy's gathers release the GIL), and only the products are put back in order: what re-scoring an
        approximate search's candidates costs."""
        flat = np.asarray(rows, dtype=np.int64).reshape(-1)
        query_of = np.repeat(np.arange(len(queries)), rows.shape[1])
        out = np.empty(len(flat), dtype=np.float32)

        def score(group: tuple[int, np.ndarray, np.ndarray]) -> None:
            i, where, local = group
            out[where] = np.einsum("nd,nd->n", self.shards[i].open()[local], queries[query_of[where]])

        groups = list(self._by_shard(flat))
        with ThreadPoolExecutor(max_workers=min(len(groups), os.cpu_count() or 1)) as pool:
            list(pool.map(score, groups))
        return out.reshape(rows.shape)

    def fingerprint(self, chunk_rows: int = 65_536) -> str:
        """Identity of the stored vectors: the sha256 (24 hex digits) of the shape, each vector's document row and
        every vector (float32 rows; a sparse store's row lengths, term ids and weights), read one shard at a time in
        blocks of ``chunk_rows`` rows, so that a change to any one row changes it. It depends on the vectors alone,
        not on where they are held (memory or cache) or how they are cut into shards. Hashing runs at disk or
        memory speed (README.md, "saved index")."""
        head = hashlib.sha256(b"every-row\0" + np.asarray(self.shape, dtype=np.int64).tobytes() + self.doc.tobytes())
        parts = [hashlib.sha256() for _ in range(3 if self.sparse else 1)]  # each streamed: the cuts do not matter
        for shard in self.shards:
            vectors = shard.open()
            for offset in range(0, vectors.shape[0], chunk_rows):
                block = vectors[offset: offset + chunk_rows]
                if self.sparse:
                    block = sp.csr_matrix(block)
                    block.sort_indices()
                    for digest, array in zip(parts, (np.diff(block.indptr).astype(np.int64),
                                                     block.indices.astype(np.int64),
                                                     block.data.astype(np.float32)), strict=True):
                        digest.update(np.ascontiguousarray(array))
                else:  # a float32 block of a memory-mapped shard is hashed where it lies, without a copy
                    parts[0].update(np.ascontiguousarray(block, dtype=np.float32))
            del vectors
        for digest in parts:
            head.update(digest.digest())
        return "store:" + short_digest(head)

    def sample(self, n: int, seed: int = 0) -> Embeddings:
        """``n`` distinct rows drawn at random (all rows when the store has fewer), in store order."""
        if n >= len(self):
            return self.take(np.arange(len(self)))
        return self.take(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def load(self) -> Embeddings:
        """Every vector as one array (a single shard as it is: memory-mapped when on disk)."""
        if len(self.shards) == 1:
            return self.shards[0].open()
        parts = [s.open() for s in self.shards]
        return sp.vstack(parts, format="csr") if self.sparse else np.concatenate(parts).astype(np.float32, copy=False)

    @classmethod
    def from_array(cls, vectors: Embeddings) -> ShardStore:
        """An in-memory store of one shard, one vector per document."""
        return cls([Shard(vectors, np.arange(vectors.shape[0]))])

    @classmethod
    def concatenate(cls, stores: Sequence[ShardStore], doc_counts: Sequence[int]) -> ShardStore:
        """The stores of corpora laid end to end (a pooled corpus), their document rows shifted accordingly."""
        starts = np.concatenate([[0], np.cumsum(doc_counts)[:-1]]).astype(np.int64)
        return cls([Shard(s.source, np.asarray(s.doc) + offset)
                    for store, offset in zip(stores, starts, strict=True) for s in store.shards])
