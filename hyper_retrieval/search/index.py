"""Exact and approximate top-k search over dense (faiss or torch) and sparse (scipy CSR) document vectors.

Every search returns ``(scores, indices)``, both of shape (n_queries, k), best first; a slot with no document has
index -1 and score -inf. :func:`run_from_topk` turns them into a run {query id: {doc id: score}}.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from hyper_retrieval.core.atomic_files import atomic_file, file_digest
from hyper_retrieval.core.types import Run
from hyper_retrieval.search.shards import ShardStore

try:
    import faiss
except ImportError:  # the torch backend searches without it (the GPU image has no faiss)
    faiss = None


def require_faiss() -> None:
    if faiss is None:
        raise ImportError("this index needs faiss (pip install faiss-cpu); exact search on the torch backend does not")



def run_from_topk(query_ids: Sequence[str], doc_ids: Sequence[str], scores: np.ndarray, indices: np.ndarray) -> Run:
    """{query id: {doc id: score}} from top-k arrays (n_queries, k); slots with index -1 are left out."""
    return {qid: {doc_ids[j]: float(s) for s, j in zip(row_scores, row_idx, strict=True) if j >= 0}
            for qid, row_scores, row_idx in zip(query_ids, scores, indices, strict=True)}


def topk_overlap(approx_indices: np.ndarray, exact_indices: np.ndarray) -> float:
    """Recall@k of an approximate search against the exact one: mean share of the exact top-k (q, k) found."""
    k = exact_indices.shape[1]
    hits = [len(np.intersect1d(a[a >= 0], e[e >= 0])) for a, e in zip(approx_indices, exact_indices, strict=True)]
    return float(np.mean(hits)) / k


def top_documents(search: Callable[[Any, int], tuple[np.ndarray, np.ndarray]], queries: Any, k: int,
                  window_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-k documents by their best window (MaxP), exact at the document level for an exact window index.

    ``search(queries, m)`` gives the top-m windows of each query (scores, window indices, (n, m), best first, -1
    for none); ``window_doc`` (n_windows,) maps a window to its document. A query's top-k documents are the first k
    distinct documents among its top windows, so each query is searched again with four times the depth until k
    distinct documents appear (or every window it can reach is in). Returns (scores, doc indices), (n, k), as
    every search here: a document at most once per row, -1 / -inf for empty slots.
    """
    n_windows = len(window_doc)
    n_docs = int(window_doc[-1]) + 1 if n_windows else 0
    if n_windows == n_docs:  # one window per document
        return search(queries, min(k, n_windows))
    k = min(k, n_docs)
    n_queries = queries.shape[0]
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    indices = np.full((n_queries, k), -1, dtype=np.int64)
    pending, depth = np.arange(n_queries), min(n_windows, 2 * k)
    while len(pending):
        window_scores, windows = search(queries[pending], depth)
        unfinished = []
        for row, query in enumerate(pending):
            found = windows[row] >= 0
            docs = window_doc[windows[row][found]]
            _, first = np.unique(docs, return_index=True)  # a document's first (best) window
            first.sort()
            if len(first) < k and found.all() and depth < n_windows:
                unfinished.append(query)
                continue
            best = first[:k]
            scores[query, : len(best)] = window_scores[row][found][best]
            indices[query, : len(best)] = docs[best]
        pending, depth = np.asarray(unfinished, dtype=np.int64), min(n_windows, depth * 4)
    return scores, indices


DenseKind = Literal["flat", "ivf", "hnsw", "hnsw-sq8", "ivfpq", "ivfpq-fs", "opq"]
DENSE_KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw", "hnsw-sq8", "ivfpq", "ivfpq-fs", "opq")
IVF_KINDS = ("ivf", "ivfpq", "ivfpq-fs", "opq")
DEFAULT_REFINE = {"ivfpq-fs": 4}  # 4-bit codes rank the neighbourhood, the stored vectors the order (docs/SCALING.md)
INDEX_FORMAT = 3  # saved-index settings: 2 adds the checksum and the store, dimension and model it was built on;
#                 3 a store fingerprint of every vector (ShardStore.fingerprint)
STORE_FINGERPRINT_FORMAT = 3  # 3: the store's fingerprint hashes every vector (before: 1,024 of them)


def checked_refine_factor(value: Any, where: str = "refine_factor") -> int:
    """``value`` as a refine factor: an integer >= 1 (a bool, float, text or None is not one); a ValueError naming
    ``where`` otherwise, when the index is made rather than at its first search."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{where}: expected an integer >= 1, got {value!r} ({type(value).__name__})")
    return int(value)


def merge_topk(scores: np.ndarray, indices: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best columns of each row of (scores, indices) (n, m), best first; ties keep the earlier column."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(indices, order, 1)


def exact_search(store: ShardStore, queries: np.ndarray, k: int, chunk_rows: int = 65_536,
                 device: str | torch.device = "cpu", show_progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product of queries (n, dim) over a store, read ``chunk_rows`` vectors at a time and
    scored on ``device`` (matmul + topk): the memory it needs is one chunk, one (query batch, chunk) score block and
    the running top-k, whatever the corpus size; no faiss needed. Returns scores float32 and store rows int64,
    (n, min(k, len(store)))."""
    k = min(k, len(store))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    scores = torch.zeros((len(q), 0), device=device)
    rows = torch.zeros((len(q), 0), dtype=torch.long, device=device)
    query_batch = max(1, 2**26 // chunk_rows)  # score blocks of at most 2^26 floats
    total = -(-len(store) // chunk_rows)
    for start, block in tqdm(store.chunks(chunk_rows), total=total, desc="exact search", unit="chunk",
                             disable=not show_progress or total < 2):
        docs = torch.from_numpy(block).to(device)
        block_scores, block_rows = [], []
        for first in range(0, len(q), query_batch):
            top = torch.topk(q[first: first + query_batch] @ docs.T, min(k, len(docs)), dim=1)
            block_scores.append(top.values)
            block_rows.append(top.indices + start)
        candidates = torch.cat([scores, torch.cat(block_scores)], 1)  # fewer than k while the first chunks are small
        merged = torch.topk(candidates, min(k, candidates.shape[1]), dim=1)
        scores = merged.values
        rows = torch.gather(torch.cat([rows, torch.cat(block_rows)], 1), 1, merged.indices)
    return scores.float().cpu().numpy(), rows.cpu().numpy()


class DenseIndex:
    """Inner-product search over document vectors: an array (n_docs, dim) or a :class:`ShardStore`.

    ``kind``:
      - "flat": exact. The "faiss" (CPU) backend streams the vectors chunk by chunk through :func:`exact_search`, so a
        memory-mapped store is never loaded whole; the "torch" backend holds them all on the GPU (float16) or CPU and
        searches with matmul + topk.
      - "ivf" (IVF-Flat, ``nlist`` cells, ``nprobe`` searched), "hnsw" (``hnsw_m`` links, ``ef_search``; "hnsw-sq8"
        over 8-bit scalar-quantised vectors), "ivfpq"
        (IVF with product-quantised codes of ``pq_m`` bytes), "ivfpq-fs" (IVF with ``pq_m`` 4-bit codes, default
        dim / 2, scanned with faiss's SIMD fast-scan tables) and "opq" (a learnt rotation, then IVF-PQ): faiss
        indexes, trained on ``train_size`` vectors drawn from the store and filled from it ``chunk_rows`` at a time.
        With ``refine_factor`` f > 1 a search takes the k * f best candidates and re-scores them exactly with the
        stored vectors (read from the memory-mapped store, not held by the index); None is 4 for ivfpq-fs, else 1.
    ``backend``: "faiss", "torch" (exact only) or "auto" (torch for flat when CUDA is available, else faiss).
    Approximate indexes are saved with :meth:`save` and reopened memory-mapped with :meth:`load`.
    """

    def __init__(self, vectors: np.ndarray | ShardStore, kind: DenseKind = "flat",
                 backend: Literal["auto", "faiss", "torch"] = "auto", nlist: int | None = None, nprobe: int = 32,
                 hnsw_m: int = 32, ef_search: int = 256, pq_m: int | None = None, train_size: int | None = None,
                 refine_factor: int | None = None, chunk_rows: int = 65_536, show_progress: bool = False) -> None:
        if isinstance(vectors, ShardStore):
            store = vectors
        elif vectors.ndim != 2 or len(vectors) == 0:
            raise ValueError(f"embeddings must be a non-empty (n_docs, dim) array, got shape {vectors.shape}")
        else:
            store = ShardStore.from_array(vectors)
        if kind not in DENSE_KINDS:
            raise ValueError(f"unknown index kind {kind!r}; use one of {DENSE_KINDS}")
        if backend == "auto":
            backend = "torch" if kind == "flat" and torch.cuda.is_available() else "faiss"
        if backend == "torch" and kind != "flat":
            raise ValueError(f"the torch backend searches exactly; kind={kind!r} needs backend='faiss'")
        refine_factor = checked_refine_factor(DEFAULT_REFINE.get(kind, 1) if refine_factor is None else refine_factor)
        self.store: ShardStore | None = store
        self.kind, self.backend = kind, backend
        self.refine_factor, self.chunk_rows = refine_factor, chunk_rows
        self.show_progress = show_progress
        self._size, self._dim = store.shape
        self._faiss: Any = None  # a faiss.Index for approximate kinds
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "torch":
            dtype = torch.float16 if self._device.type == "cuda" else torch.float32
            self._docs = torch.cat([torch.from_numpy(block).to(self._device, dtype)
                                    for _, block in store.chunks(chunk_rows)])
        elif kind != "flat":
            self._faiss = self._build_faiss(nlist, hnsw_m, pq_m, train_size)
            self._set_search_parameters(nprobe, ef_search)

    def _build_faiss(self, nlist: int | None, hnsw_m: int, pq_m: int | None, train_size: int | None) -> Any:
        require_faiss()
        n, dim = self._size, self._dim
        nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 training points per cell
        pq_m = pq_m or max(1, dim // 2 if self.kind == "ivfpq-fs" else dim // 8)
        if self.kind in ("ivfpq", "ivfpq-fs", "opq") and dim % pq_m:
            raise ValueError(f"pq_m={pq_m} must divide the dimension {dim}")
        # 8-bit codes need >= 39 * 256 training vectors; fast-scan codes are 4-bit
        pq_bits = 4 if self.kind == "ivfpq-fs" else int(np.clip(np.log2(max(n, 2) / 39), 1, 8))
        spec = {"ivf": f"IVF{nlist},Flat", "hnsw": f"HNSW{hnsw_m},Flat", "hnsw-sq8": f"HNSW{hnsw_m},SQ8",
                "ivfpq": f"IVF{nlist},PQ{pq_m}x{pq_bits}", "ivfpq-fs": f"IVF{nlist},PQ{pq_m}x4fs",
                "opq": f"OPQ{pq_m},IVF{nlist},PQ{pq_m}x{pq_bits}"}[self.kind]
        index = faiss.index_factory(dim, spec, faiss.METRIC_INNER_PRODUCT)
        if self.kind in ("ivfpq", "opq"):  # polysemous codes serve Hamming pre-filtering, unused here: 10x training
            faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        if not index.is_trained:
            index.train(self.store.sample(train_size or max(64 * nlist, 64 * 2**pq_bits, 16_384)))
        total = -(-n // self.chunk_rows)
        for _, block in tqdm(self.store.chunks(self.chunk_rows), total=total, desc=f"fill {self.kind} index",
                             unit="chunk", disable=not self.show_progress or total < 2):
            index.add(block)
        return index

    def _set_search_parameters(self, nprobe: int, ef_search: int) -> None:
        space = faiss.ParameterSpace()
        if self.kind in ("hnsw", "hnsw-sq8"):
            space.set_index_parameter(self._faiss, "efSearch", ef_search)
        else:
            space.set_index_parameter(self._faiss, "nprobe", min(nprobe, faiss.extract_index_ivf(self._faiss).nlist))

    def __len__(self) -> int:
        return self._size

    def search(self, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents of each query (n_queries, dim) by inner product: scores float32 and indices int64,
        both (n_queries, min(k, n_docs)), -1 / -inf where an approximate index found fewer."""
        k = min(k, len(self))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.backend == "faiss" and self.kind == "flat":
            return exact_search(self.store, queries, k, self.chunk_rows, show_progress=self.show_progress)
        scores = np.empty((len(queries), k), dtype=np.float32)
        indices = np.empty((len(queries), k), dtype=np.int64)
        if self.backend == "torch":  # bound the (batch, n_docs) score block to about 2^28 entries
            batch_size = max(1, min(batch_size, 2**28 // len(self)))
        starts = range(0, len(queries), batch_size)
        for start in tqdm(starts, desc="search", unit="batch", disable=not self.show_progress):
            block = slice(start, start + batch_size)
            scores[block], indices[block] = self._search_block(queries[block], k)
        scores[indices < 0] = -np.inf  # faiss marks empty slots (IVF with few probed cells) with index -1
        return scores, indices

    def _search_block(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "torch":
            q = torch.from_numpy(queries).to(self._device, self._docs.dtype)
            top = torch.topk((q @ self._docs.T).float(), k, dim=1)
            return top.values.cpu().numpy(), top.indices.cpu().numpy()
        if self.refine_factor == 1:
            return self._faiss.search(queries, k)
        if self.store is None:
            raise ValueError("refine_factor > 1 re-scores with the stored vectors: load the index with its store")
        _, candidates = self._faiss.search(queries, min(k * self.refine_factor, len(self)))
        exact = np.empty(candidates.shape, dtype=np.float32)
        step = max(1, 2**24 // (candidates.shape[1] * self._dim))  # gathered vectors: at most 2^24 floats at once
        for first in range(0, len(queries), step):
            rows = slice(first, first + step)
            exact[rows] = self.store.inner_products(queries[rows], np.maximum(candidates[rows], 0))
        exact[candidates < 0] = -np.inf
        return merge_topk(exact, candidates, k)

    def recall_against_exact(self, queries: np.ndarray, k: int) -> float:
        """Recall@k of this index's top-k against an exact search of the same vectors (1.0 for an exact index)."""
        if self.store is None:
            raise ValueError("recall against exact search needs the stored vectors: load the index with its store")
        return topk_overlap(self.search(queries, k)[1], exact_search(self.store, queries, k, self.chunk_rows)[1])

    def bytes_per_vector(self) -> float:
        """Memory the index holds per vector: the serialised faiss index over the vector count; for flat, the
        vectors themselves (4 bytes a dimension; 2 for float16 on the GPU)."""
        if self._faiss is None:
            return float(self._dim * (self._docs.element_size() if self.backend == "torch" else 4))
        return faiss.serialize_index(self._faiss).nbytes / max(self._faiss.ntotal, 1)

    def save(self, path: str | os.PathLike, model: str | None = None) -> None:
        """Writes an approximate index: the faiss file at ``path`` and its settings at ``path`` + ".json", each to a
        temporary file renamed into place (a reader with the old index mapped keeps reading the old file). The
        settings name what it was built on (the store's fingerprint, dimension and count, the metric and, given,
        ``model``: the passage encoder's fingerprint) and the file's sha256, all checked by :meth:`load`."""
        if self._faiss is None:
            raise ValueError(f"a {self.kind} index on the {self.backend} backend is the stored vectors themselves; "
                             "only approximate (faiss) indexes are saved")
        with atomic_file(path) as tmp:
            faiss.write_index(self._faiss, str(tmp))
            checksum = file_digest(tmp)
        settings = {"format": INDEX_FORMAT, "kind": self.kind, "refine_factor": self.refine_factor,
                    "ntotal": self._size, "dim": self._dim, "metric": "inner_product", "sha256": checksum,
                    "store": self.store.fingerprint() if self.store is not None else None, "model": model}
        with atomic_file(f"{path}.json") as tmp:
            tmp.write_text(json.dumps(settings, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike, vectors: np.ndarray | ShardStore | None = None, mmap: bool = True,
             show_progress: bool = False, model: str | None = None) -> DenseIndex:
        """Reopens a saved index after checking it: the file's sha256, and that ``vectors`` (the store it is
        searched with; needed for refine_factor > 1 and recall) and ``model`` (a passage-encoder fingerprint) are
        the ones it was built on. ``mmap`` maps its inverted lists from the file instead of reading them into memory
        (IVF kinds). Any mismatch is a ValueError naming both sides."""
        require_faiss()
        path = Path(path)
        try:
            settings = json.loads(Path(f"{path}.json").read_text())
            recorded = {key: settings[key] for key in ("kind", "refine_factor", "ntotal", "dim", "sha256", "store")}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{path}.json: not the settings of a saved index ({type(e).__name__}: {e}); indexes "
                             "saved before format 2 carry no checksum: build it again") from None
        checked_refine_factor(recorded["refine_factor"], f"{path}.json: refine_factor")  # the file is not checksummed
        if not path.is_file() or file_digest(path) != recorded["sha256"]:
            raise ValueError(f"{path}: does not match the checksum in {path.name}.json (damaged, or replaced "
                             "without its settings): build the index again")
        try:
            mapped = mmap and recorded["kind"] in IVF_KINDS
            index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mapped else 0)
        except RuntimeError as e:
            raise ValueError(f"{path}: not a readable saved index ({e})") from None
        store = vectors if vectors is None or isinstance(vectors, ShardStore) else ShardStore.from_array(vectors)
        if (index.ntotal, index.d) != (recorded["ntotal"], recorded["dim"]):
            raise ValueError(f"{path}: holds {index.ntotal} vectors of {index.d} dimensions, its settings say "
                             f"{recorded['ntotal']} of {recorded['dim']}")
        if store is not None:
            if store.shape != (index.ntotal, index.d):
                raise ValueError(f"{path}: built on {index.ntotal} vectors of {index.d} dimensions; the store given "
                                 f"has {len(store)} of {store.dim}")
            if settings.get("format", 0) < STORE_FINGERPRINT_FORMAT:
                raise ValueError(f"{path}.json: saved with format {settings.get('format')}, whose store fingerprint "
                                 f"({recorded['store']}) read a sample of 1,024 vectors, not every one, so it cannot "
                                 "tell whether the store given is the one it was built on: build the index again")
            if (given := store.fingerprint()) != recorded["store"]:
                raise ValueError(f"{path}: built on the store {recorded['store']}, the store given is {given} "
                                 "(another model's or corpus's vectors of the same size, or vectors changed since)")
        if model is not None and settings.get("model") is not None and model != settings["model"]:
            raise ValueError(f"{path}: built with the passage encoder {settings['model']}, the model given is "
                             f"{model}")
        self = cls.__new__(cls)
        self.store, self.kind, self.backend = store, recorded["kind"], "faiss"
        self.refine_factor, self.chunk_rows, self.show_progress = recorded["refine_factor"], 65_536, show_progress
        self._size, self._dim, self._faiss = index.ntotal, index.d, index
        self._device = torch.device("cpu")
        return self


def prune_query_terms(queries: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """Keeps the ``k`` largest-weight terms of each query row (n_queries, vocab); ties go to the lower term id."""
    queries = sp.csr_matrix(queries, copy=True)
    queries.sum_duplicates()
    rows = np.repeat(np.arange(queries.shape[0]), np.diff(queries.indptr))
    order = np.lexsort((queries.indices, -queries.data, rows))  # by row, then weight descending, then term id
    rank_in_row = np.empty(len(order), dtype=np.int64)
    rank_in_row[order] = np.arange(len(order)) - queries.indptr[rows[order]]
    queries.data[rank_in_row >= k] = 0
    queries.eliminate_zeros()
    return queries


class SparseIndex:
    """Exact top-k over sparse document vectors (n_docs, vocab), e.g. SPLADE term weights.

    The documents are stored as an inverted index (vocab, n_docs) CSR: one posting list per term. A search is one
    sparse product queries @ postings, so only documents sharing a term with the query get a score; the others are
    never returned. From a :class:`ShardStore`, each shard's posting lists are built on their own and merged.
    """

    def __init__(self, docs: sp.spmatrix | np.ndarray | ShardStore, show_progress: bool = False,
                 chunk_rows: int = 65_536) -> None:
        store = docs if isinstance(docs, ShardStore) else None
        if store is None:
            docs = sp.csr_matrix(docs, dtype=np.float32)
            if docs.shape[0] == 0:
                raise ValueError("the sparse index needs at least one document")
            store = ShardStore.from_array(docs)
        self.shape = store.shape
        self.postings = sp.hstack([sp.csr_matrix(block, dtype=np.float32).T.tocsr()  # (vocab, n_docs)
                                   for _, block in store.chunks(chunk_rows)], format="csr")
        self.show_progress = show_progress

    def __len__(self) -> int:
        return self.shape[0]

    def search(self, queries: sp.spmatrix | np.ndarray, k: int, prune_terms: int | None = None,
               batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents of each query (n_queries, vocab) by dot product, optionally after keeping only each
        query's ``prune_terms`` heaviest terms. Returns scores float32 and indices int64, (n_queries, k)."""
        queries = sp.csr_matrix(queries, dtype=np.float32)
        if queries.shape[1] != self.shape[1]:
            raise ValueError(f"queries have {queries.shape[1]} dimensions, the documents {self.shape[1]}")
        if prune_terms is not None:
            queries = prune_query_terms(queries, prune_terms)
        scores = np.full((queries.shape[0], k), -np.inf, dtype=np.float32)
        indices = np.full((queries.shape[0], k), -1, dtype=np.int64)
        starts = range(0, queries.shape[0], batch_size)
        for start in tqdm(starts, desc="search", unit="batch", disable=not self.show_progress):
            block = (queries[start:start + batch_size] @ self.postings).tocsr()  # (batch, n_docs), matches only
            for i in range(block.shape[0]):
                row = slice(block.indptr[i], block.indptr[i + 1])
                data, docs = block.data[row], block.indices[row]
                top = np.argpartition(-data, k - 1)[:k] if len(data) > k else np.arange(len(data))
                top = top[np.lexsort((docs[top], -data[top]))]  # score descending, then lower doc index
                scores[start + i, : len(top)] = data[top]
                indices[start + i, : len(top)] = docs[top]
        return scores, indices
