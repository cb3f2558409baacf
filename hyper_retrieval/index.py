"""Exact and approximate top-k search over dense (faiss or torch) and sparse (scipy CSR) document vectors.

Every search returns ``(scores, indices)``, both of shape (n_queries, k), best first; a slot with no document has
index -1 and score -inf. :func:`run_from_topk` turns them into a run {query id: {doc id: score}}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import faiss
import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

Run = dict[str, dict[str, float]]


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


class DenseIndex:
    """Inner-product search over document embeddings (n_docs, dim).

    ``kind``: "flat" (exact, the default), "ivf" (IndexIVFFlat with ``nlist`` cells, ``nprobe`` searched) or "hnsw"
    (IndexHNSWFlat with ``hnsw_m`` links, ``ef_search``). ``backend``: "faiss", "torch" (matmul + topk on the GPU if
    there is one, exact only) or "auto" (torch for an exact index when CUDA is available, else faiss).
    """

    def __init__(self, embeddings: np.ndarray, kind: Literal["flat", "ivf", "hnsw"] = "flat",
                 backend: Literal["auto", "faiss", "torch"] = "auto", nlist: int | None = None, nprobe: int = 32,
                 hnsw_m: int = 32, ef_search: int = 256, show_progress: bool = False) -> None:
        if embeddings.ndim != 2 or len(embeddings) == 0:
            raise ValueError(f"embeddings must be a non-empty (n_docs, dim) array, got shape {embeddings.shape}")
        if backend == "auto":
            backend = "torch" if kind == "flat" and torch.cuda.is_available() else "faiss"
        if backend == "torch" and kind != "flat":
            raise ValueError(f"the torch backend searches exactly; kind={kind!r} needs backend='faiss'")
        self.embeddings = embeddings
        self.kind = kind
        self.backend = backend
        self.show_progress = show_progress
        self._device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if backend == "torch":
            dtype = torch.float16 if self._device.type == "cuda" else torch.float32
            self._docs = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32)).to(self._device, dtype)
        else:
            self._faiss = self._build_faiss(np.ascontiguousarray(embeddings, dtype=np.float32), nlist, nprobe, hnsw_m,
                                            ef_search)

    def _build_faiss(self, vectors: np.ndarray, nlist: int | None, nprobe: int, hnsw_m: int,
                     ef_search: int) -> faiss.Index:
        n, dim = vectors.shape
        if self.kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif self.kind == "ivf":
            nlist = nlist or max(1, min(int(4 * np.sqrt(n)), n // 39))  # faiss wants >= 39 points per cell
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.nprobe = min(nprobe, nlist)
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = ef_search
        else:
            raise ValueError(f"unknown index kind {self.kind!r}; use 'flat', 'ivf' or 'hnsw'")
        index.add(vectors)
        return index

    def __len__(self) -> int:
        return len(self.embeddings)

    def search(self, queries: np.ndarray, k: int, batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """Top-k documents of each query (n_queries, dim) by inner product: scores float32 and indices int64,
        both (n_queries, min(k, n_docs))."""
        k = min(k, len(self))
        queries = np.ascontiguousarray(queries, dtype=np.float32)
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
        if self.backend == "faiss":
            return self._faiss.search(queries, k)
        q = torch.from_numpy(queries).to(self._device, self._docs.dtype)
        top = torch.topk((q @ self._docs.T).float(), k, dim=1)
        return top.values.cpu().numpy(), top.indices.cpu().numpy()

    def recall_against_exact(self, queries: np.ndarray, k: int) -> float:
        """Recall@k of this index's top-k against an exact inner-product search of the same embeddings (1.0 for
        an exact index)."""
        exact = DenseIndex(self.embeddings, kind="flat", backend="faiss")
        return topk_overlap(self.search(queries, k)[1], exact.search(queries, k)[1])


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
    never returned.
    """

    def __init__(self, docs: sp.spmatrix | np.ndarray, show_progress: bool = False) -> None:
        docs = sp.csr_matrix(docs, dtype=np.float32)
        if docs.shape[0] == 0:
            raise ValueError("the sparse index needs at least one document")
        self.shape = docs.shape
        self.postings = docs.T.tocsr()  # (vocab, n_docs)
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
