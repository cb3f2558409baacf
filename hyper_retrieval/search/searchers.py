"""Searching a corpus: BM25, or a model's query encoder over an index of its corpus vectors.

A searcher turns (corpus, queries, k) into a :class:`SearchResult`: the run {query id: {doc id: score}} of documents
(never windows), facts about the search, and the queries' attention over a prompt pool when the model has one.
:func:`index_corpus` builds a :class:`CorpusIndex` once (a :class:`CorpusEncoder`'s vectors: shards, caches,
windows; and the index over them), and an :class:`IndexSearcher` holds it with a :class:`QueryEncoder` of the same
model and searches it as often as wanted; a :class:`ModelSearcher` does both for each corpus it is given. Query
encoders: a HypeR model's (:class:`HyperQueryEncoder`: vectors and prompt attention from one pass, prompts chosen by
task for a pool routed so) or any BEIR-style model's ``encode_queries(list[str], batch_size=, show_progress_bar=)``
-> (n, dim) array, or CSR for sparse models (:class:`BeirQueryEncoder`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from hyper_retrieval.data.beir import Corpus
from hyper_retrieval.search.bm25 import BM25
from hyper_retrieval.search.cache import Embeddings
from hyper_retrieval.search.corpus_encoder import CorpusEncoder, is_hyper_model
from hyper_retrieval.search.index import DenseIndex, DenseKind, Run, SparseIndex, run_from_topk, top_documents
from hyper_retrieval.search.shards import ShardStore
from modeling_hyper import HyperRetrieverModel

RECALL_SAMPLE = 1000  # queries used to measure an approximate index against the exact one


def routes_by_task(model: Any) -> bool:
    """Whether the model's prompt is chosen by the query's task (the oracle pool, synthesizer='task')."""
    prompt = getattr(getattr(model, "config", None), "hyper_prompt", None)
    return isinstance(prompt, dict) and prompt.get("synthesizer") == "task"


@dataclass
class SearchResult:
    """What a search gives: the run, facts about the search for the results file (timings, index recall), and the
    queries' attention over the prompt pool, (n_queries, N) in the order of the queries, for a model with a pool."""

    run: Run
    info: dict[str, Any]
    attention: np.ndarray | None = None


class Searcher(Protocol):
    """Anything that retrieves the top-k documents of a corpus for queries {query id: text}."""

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> SearchResult:
        """`tasks`: the task of each query (in the order of `queries`), for a model whose prompts are chosen by
        task; others ignore it."""
        ...


class QueryEncoder(Protocol):
    """A model's query side: texts (and their tasks) -> vectors (n, dim) or CSR (n, vocab), and the prompt attention
    (n, N) where the model has a pool (else None)."""

    def encode(self, queries: Sequence[str], tasks: Sequence[str] | None) -> tuple[Embeddings, np.ndarray | None]:
        ...


@dataclass
class HyperQueryEncoder:
    """A HyperRetrieverModel's queries: vectors and prompt attention from one pass; a pool routed by task is given
    each query's task."""

    model: HyperRetrieverModel
    batch_size: int
    show_progress: bool

    def encode(self, queries: Sequence[str], tasks: Sequence[str] | None) -> tuple[Embeddings, np.ndarray | None]:
        task = list(tasks) if tasks is not None and routes_by_task(self.model) else None
        vectors, attention = self.model.encode_queries(list(queries), batch_size=self.batch_size,
                                                       show_progress_bar=self.show_progress,
                                                       return_prompt_attention=True, task=task)
        return vectors, None if attention is None else np.asarray(attention, dtype=np.float32)


@dataclass
class BeirQueryEncoder:
    """Any BEIR-style model's queries (`encode_queries`), and their prompt attention where the model offers
    ``prompt_attention(list[str], batch_size=)`` -> (n, N) (a second pass)."""

    model: Any
    batch_size: int
    show_progress: bool
    encode_kwargs: dict[str, Any] = field(default_factory=dict)

    def encode(self, queries: Sequence[str], tasks: Sequence[str] | None) -> tuple[Embeddings, np.ndarray | None]:
        vectors = self.model.encode_queries(list(queries), batch_size=self.batch_size,
                                            show_progress_bar=self.show_progress, **self.encode_kwargs)
        attend = getattr(self.model, "prompt_attention", None)
        attention = None if attend is None else attend(list(queries), batch_size=self.batch_size)
        return vectors, None if attention is None else np.asarray(attention, dtype=np.float32)


def query_encoder(encoder: CorpusEncoder) -> QueryEncoder:
    """The query side of the model a corpus encoder reads passages with, in its batch size and progress setting."""
    if is_hyper_model(encoder.model):
        return HyperQueryEncoder(encoder.model, encoder.batch_size, encoder.show_progress)
    return BeirQueryEncoder(encoder.model, encoder.batch_size, encoder.show_progress, encoder.encode_kwargs)


@dataclass
class BM25Searcher:
    """BM25 (bm25s, Lucene variant) built over the corpus at each search; it reads passages whole."""

    k1: float = 0.9
    b: float = 0.4
    show_progress: bool = True

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> SearchResult:
        start = time.perf_counter()
        bm25 = BM25(corpus.ids, corpus.read_rows(np.arange(len(corpus))), self.k1, self.b, self.show_progress)
        indexed = time.perf_counter()
        run = bm25.search(queries, k)
        return SearchResult(run, {"index_s": indexed - start, "search_s": time.perf_counter() - indexed})


@dataclass
class ModelSearcher:
    """A BEIR-style encoder model searched with a :class:`DenseIndex` or :class:`SparseIndex` built over the store
    its :class:`CorpusEncoder` gives. Queries are read at the model's own query length.

        searcher = ModelSearcher(CorpusEncoder(model, "my-model", cache_dir=Path("cache")), index_kind="hnsw")
        result = searcher.search(corpus, {"q1": "who wrote ..."}, k=10)  # .run, .info, .attention
    """

    encoder: CorpusEncoder
    index_kind: DenseKind = "flat"
    prune_query_terms: int | None = None
    index_options: dict[str, Any] = field(default_factory=dict)  # DenseIndex settings (nprobe, pq_m, ...)
    queries: QueryEncoder = field(init=False)

    def __post_init__(self) -> None:
        self.queries = query_encoder(self.encoder)
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

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> SearchResult:
        """The corpus indexed (:func:`index_corpus`), then searched once (:class:`IndexSearcher`)."""
        index = index_corpus(self.encoder, corpus, self.index_kind, self.index_options)
        return IndexSearcher(index, self.queries, self.prune_query_terms).search(queries, k, tasks)


@dataclass
class CorpusIndex:
    """A corpus's vectors (a store of shards, one row per window) and the index over them, built once by
    :func:`index_corpus`; an :class:`IndexSearcher` searches it as often as wanted."""

    corpus: Corpus
    store: ShardStore
    index: DenseIndex | SparseIndex
    info: dict[str, Any]  # encode_corpus_s, corpus_cache_hit, windows_per_doc, index_build_s, index_bytes_per_vector


def index_corpus(encoder: CorpusEncoder, corpus: Corpus, kind: DenseKind = "flat",
                 options: dict[str, Any] | None = None) -> CorpusIndex:
    """The corpus encoded (or read from the cache) by ``encoder`` and indexed: dense vectors by a :class:`DenseIndex`
    of ``kind`` (``options``: nprobe, pq_m, ...), sparse ones by a :class:`SparseIndex`; both steps timed."""
    start = time.perf_counter()
    store, cache_hit = encoder.encode(corpus)
    encoded = time.perf_counter()
    index = (SparseIndex(store, encoder.show_progress) if encoder.representation == "sparse" else
             DenseIndex(store, kind=kind, show_progress=encoder.show_progress, **(options or {})))
    info: dict[str, Any] = {"encode_corpus_s": encoded - start, "corpus_cache_hit": cache_hit,
                            "windows_per_doc": len(store) / len(corpus), "index_build_s": time.perf_counter() - encoded}
    if isinstance(index, DenseIndex):
        info["index_bytes_per_vector"] = index.bytes_per_vector()
    return CorpusIndex(corpus, store, index, info)


@dataclass
class IndexSearcher:
    """A query encoder over one corpus index: queries -> the corpus's top-k documents (a document scores its best
    window). An approximate dense index is checked against exact search on the first RECALL_SAMPLE queries."""

    index: CorpusIndex
    queries: QueryEncoder
    prune_query_terms: int | None = None  # sparse: keep each query's top terms

    def search(self, queries: dict[str, str], k: int, tasks: Sequence[str] | None = None) -> SearchResult:
        start = time.perf_counter()
        vectors, attention = self.queries.encode(list(queries.values()), tasks)
        index, store = self.index.index, self.index.store
        encoded = time.perf_counter()
        if isinstance(index, SparseIndex):
            scores, indices = top_documents(lambda q, m: index.search(q, m, self.prune_query_terms),
                                            sp.csr_matrix(vectors), k, store.doc)
        else:
            vectors = np.asarray(vectors, dtype=np.float32)
            scores, indices = top_documents(index.search, vectors, k, store.doc)
        info = {**self.index.info, "search_s": time.perf_counter() - encoded,
                "queries_per_s": len(queries) / max(time.perf_counter() - start, 1e-9)}
        if isinstance(index, DenseIndex):
            info["index_queries_per_s"] = len(queries) / max(info["search_s"], 1e-9)
            if index.kind != "flat":
                info[f"index_recall@{k}"] = index.recall_against_exact(vectors[:RECALL_SAMPLE], k)
        return SearchResult(run_from_topk(list(queries), self.index.corpus.ids, scores, indices), info, attention)
