"""Searching a corpus: BM25, or a model's query encoder over an index of its corpus vectors.

A searcher turns (corpus, queries, k) into a run {query id: {doc id: score}} of documents, never windows. A
:class:`ModelSearcher` takes the corpus vectors from a :class:`CorpusEncoder` (shards, caches, windows) and encodes
the queries with the same model: ``encode_queries(list[str], batch_size=, show_progress_bar=)`` -> (n, dim) array
(or CSR for sparse models). A model whose ``config.hyper_prompt`` is set also gives ``prompt_attention(list[str])``
-> (n, N).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from hyper_retrieval.data.beir import Corpus
from hyper_retrieval.search.bm25 import BM25
from hyper_retrieval.search.cache import Embeddings
from hyper_retrieval.search.corpus_encoder import CorpusEncoder
from hyper_retrieval.search.index import DenseIndex, DenseKind, Run, SparseIndex, run_from_topk, top_documents

RECALL_SAMPLE = 1000  # queries used to measure an approximate index against the exact one


def routes_by_task(model: Any) -> bool:
    """Whether the model's prompt is chosen by the query's task (the oracle pool, synthesizer='task')."""
    prompt = getattr(getattr(model, "config", None), "hyper_prompt", None)
    return isinstance(prompt, dict) and prompt.get("synthesizer") == "task"


class Searcher(Protocol):
    """Anything that retrieves the top-k documents of a corpus for queries {query id: text}."""

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> tuple[Run, dict[str, Any]]:
        """Returns the run and facts about the search (timings, index recall) for the results file. `tasks`: the task
        of each query (in the order of `queries`), for a model whose prompts are chosen by task; others ignore it."""
        ...


@dataclass
class BM25Searcher:
    """BM25 (bm25s, Lucene variant) built over the corpus at each search; it reads passages whole."""

    k1: float = 0.9
    b: float = 0.4
    show_progress: bool = True

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> tuple[Run, dict[str, Any]]:
        start = time.perf_counter()
        bm25 = BM25(corpus.ids, corpus.read_rows(np.arange(len(corpus))), self.k1, self.b, self.show_progress)
        indexed = time.perf_counter()
        run = bm25.search(queries, k)
        return run, {"index_s": indexed - start, "search_s": time.perf_counter() - indexed}


@dataclass
class ModelSearcher:
    """A BEIR-style encoder model searched with a :class:`DenseIndex` or :class:`SparseIndex` built over the store
    its :class:`CorpusEncoder` gives. Queries are read at the model's own query length.

        searcher = ModelSearcher(CorpusEncoder(model, "my-model", cache_dir=Path("cache")), index_kind="hnsw")
        run, info = searcher.search(corpus, {"q1": "who wrote ..."}, k=10)
    """

    encoder: CorpusEncoder
    index_kind: DenseKind = "flat"
    prune_query_terms: int | None = None
    index_options: dict[str, Any] = field(default_factory=dict)  # DenseIndex settings (nprobe, pq_m, ...)
    _attention: dict[str, np.ndarray] = field(init=False, default_factory=dict)  # query text -> (N,) from searches

    def __post_init__(self) -> None:
        if self.prune_query_terms is not None and self.representation != "sparse":
            raise ValueError("query-term pruning (--prune-query-terms) applies to sparse models only")
        if self.index_kind != "flat" and self.representation == "sparse":
            raise ValueError(f"index kind {self.index_kind!r} (--index) is for dense vectors; a sparse model is "
                             "searched with its inverted index: leave --index at flat")

    @property
    def model(self) -> Any:
        return self.encoder.model

    @property
    def representation(self) -> str:
        return self.encoder.representation

    def encode_queries(self, queries: Sequence[str], tasks: Sequence[str] | None = None) -> Embeddings:
        """Query vectors (n, dim), or CSR (n, vocab) for a sparse model. A model with a prompt pool gives its
        attention in the same pass; it is kept per query text for :meth:`prompt_attention`. A pool routed by task
        is given each query's task."""
        kwargs = {"batch_size": self.encoder.batch_size, "show_progress_bar": self.encoder.show_progress,
                  **self.encoder.encode_kwargs}
        if tasks is not None and routes_by_task(self.model):
            kwargs["task"] = list(tasks)
        if self._has_prompt_pool() and "return_prompt_attention" in inspect.signature(
                self.model.encode_queries).parameters:
            encoded, attention = self.model.encode_queries(list(queries), return_prompt_attention=True, **kwargs)
            self._attention.update(zip(queries, np.asarray(attention, dtype=np.float32), strict=True))
        else:
            encoded = self.model.encode_queries(list(queries), **kwargs)
        return sp.csr_matrix(encoded) if self.representation == "sparse" else np.asarray(encoded, dtype=np.float32)

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> tuple[Run, dict[str, Any]]:
        start = time.perf_counter()
        store, cache_hit = self.encoder.encode_corpus(corpus)
        encoded = time.perf_counter()
        query_vectors = self.encode_queries(list(queries.values()), tasks)
        info: dict[str, Any] = {"encode_corpus_s": encoded - start, "corpus_cache_hit": cache_hit,
                                "windows_per_doc": len(store) / len(corpus)}
        search_start = time.perf_counter()
        if self.representation == "sparse":
            sparse_index = SparseIndex(store, self.encoder.show_progress)
            scores, indices = top_documents(
                lambda q, m: sparse_index.search(q, m, self.prune_query_terms), query_vectors, k, store.doc)
        else:
            index = DenseIndex(store, kind=self.index_kind, show_progress=self.encoder.show_progress,
                               **self.index_options)
            index_built = time.perf_counter()
            scores, indices = top_documents(index.search, query_vectors, k, store.doc)
            info["index_build_s"] = index_built - search_start
            info["index_queries_per_s"] = len(queries) / max(time.perf_counter() - index_built, 1e-9)
            info["index_bytes_per_vector"] = index.bytes_per_vector()
            if self.index_kind != "flat":
                info[f"index_recall@{k}"] = index.recall_against_exact(query_vectors[:RECALL_SAMPLE], k)
        info["search_s"] = time.perf_counter() - search_start
        info["queries_per_s"] = len(queries) / max(time.perf_counter() - encoded, 1e-9)
        return run_from_topk(list(queries), corpus.ids, scores, indices), info

    def _has_prompt_pool(self) -> bool:
        return (hasattr(self.model, "prompt_attention")
                and getattr(self.model.config, "hyper_prompt", True) is not None)

    def prompt_attention(self, queries: Sequence[str]) -> np.ndarray | None:
        """The model's attention over its prompt pool (n_queries, N), or None for a model without one; queries
        already searched are not encoded again."""
        if not self._has_prompt_pool():
            return None
        if queries and all(q in self._attention for q in queries):
            return np.stack([self._attention[q] for q in queries])
        attention = self.model.prompt_attention(list(queries), batch_size=self.encoder.batch_size)
        return np.asarray(attention, dtype=np.float32)
