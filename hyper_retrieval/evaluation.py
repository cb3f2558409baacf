"""Running retrieval over collections: BM25 or a model's encoders + an index, then the metrics per collection.

A searcher turns (corpus, queries, k) into a run {query id: {doc id: score}}. Models follow BEIR's interface:
``encode_queries(list[str], batch_size=, show_progress_bar=)`` -> (n, dim) array (or CSR for sparse models),
``encode_corpus(list[{"title", "text"}], batch_size=, show_progress_bar=)`` -> (n, dim) array or (n, vocab) CSR, and
``config.representation`` in {"dense", "sparse"}. A maximum length goes to the encode methods as ``max_length=``
when they name that parameter, else into ``config.max_seq_length`` (the HypeR model's setting). A model whose
``config.hyper_prompt`` is set also gives ``prompt_attention(list[str])`` -> (n, N) over its prompt pool.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from .beir import Collection, Corpus, pooled_collection, split_pooled
from .bm25 import BM25
from .embedding_cache import Embeddings, cached_embeddings, cached_token_store, tokenizer_fingerprint
from .index import DenseIndex, Run, SparseIndex, run_from_topk
from .metrics import compute_metrics

RECALL_SAMPLE = 1000  # queries used to measure an approximate index against the exact one


class Searcher(Protocol):
    """Anything that retrieves the top-k documents of a corpus for queries {query id: text}."""

    def search(self, corpus: Corpus, queries: dict[str, str], k: int) -> tuple[Run, dict[str, Any]]:
        """Returns the run and facts about the search (timings, index recall) for the results file."""
        ...


@dataclass
class BM25Searcher:
    """BM25 (bm25s, Lucene variant) built over the corpus at each search."""

    k1: float = 0.9
    b: float = 0.4
    show_progress: bool = True

    def search(self, corpus: Corpus, queries: dict[str, str], k: int) -> tuple[Run, dict[str, Any]]:
        start = time.perf_counter()
        bm25 = BM25(corpus.ids, corpus.read_rows(np.arange(len(corpus))), self.k1, self.b, self.show_progress)
        indexed = time.perf_counter()
        run = bm25.search(queries, k)
        return run, {"index_s": indexed - start, "search_s": time.perf_counter() - indexed}


@dataclass
class ModelSearcher:
    """A BEIR-style encoder model searched with a :class:`DenseIndex` or :class:`SparseIndex`.

    Corpus embeddings are cached in ``cache_dir`` (None: no cache) under the model's ``model_fingerprint``, the
    corpus's fingerprint and the encode settings.
    """

    model: Any
    model_fingerprint: str
    batch_size: int = 64
    max_length: int | None = None  # None: the model's own setting
    index_kind: Literal["flat", "ivf", "hnsw"] = "flat"
    prune_query_terms: int | None = None
    cache_dir: Path | None = None
    show_progress: bool = True
    corpus_chunk: int = 50_000  # documents materialised at a time while encoding
    representation: str = field(init=False)  # "dense" or "sparse", from the model's config
    encode_kwargs: dict[str, Any] = field(init=False)
    _attention: dict[str, np.ndarray] = field(init=False, default_factory=dict)  # query text -> (N,) from searches

    def __post_init__(self) -> None:
        self.representation = getattr(self.model.config, "representation", "dense")
        if self.representation not in ("dense", "sparse"):
            raise ValueError(f"config.representation must be 'dense' or 'sparse', got {self.representation!r}")
        if self.prune_query_terms is not None and self.representation != "sparse":
            raise ValueError("query-term pruning applies to sparse models only")
        self.encode_kwargs = {}
        if "max_length" in inspect.signature(self.model.encode_corpus).parameters:
            self.encode_kwargs = {"max_length": self.max_length} if self.max_length else {}
        elif hasattr(self.model.config, "max_seq_length"):
            self.max_length = self.max_length or self.model.config.max_seq_length
            self.model.config.max_seq_length = self.max_length
        elif self.max_length:
            raise ValueError("the model's encoders take no max_length and its config has no max_seq_length")

    def encode_corpus(self, corpus: Corpus) -> tuple[Embeddings, bool]:
        """Embeddings of the corpus in id order, (n_docs, dim) or CSR (n_docs, vocab), and whether the cache had
        them. A pooled corpus is encoded (and cached) component by component, so it reuses the per-collection
        entries and adds none of its own."""
        if corpus.components:
            parts, hits = zip(*(self.encode_corpus(c) for c in corpus.components), strict=True)
            merged = (sp.vstack(parts, format="csr") if self.representation == "sparse"
                      else np.concatenate([np.asarray(p) for p in parts]))
            return merged, all(hits)
        settings = {"model": self.model_fingerprint, "corpus": corpus.fingerprint, "n_docs": len(corpus),
                    "max_length": self.max_length, "representation": self.representation}
        compute = self._encoder(corpus)
        return cached_embeddings(self.cache_dir, settings, compute) if self.cache_dir else (compute(), False)

    def _encoder(self, corpus: Corpus) -> Callable[[], Embeddings]:
        if self.cache_dir is not None and hasattr(self.model, "encode_tokenized"):
            return lambda: self.model.encode_tokenized(*self.token_store(corpus), False, self.batch_size,
                                                       self.show_progress)[0]

        def encode() -> Embeddings:
            chunks = []
            with tqdm(total=len(corpus), desc="encode corpus", unit="doc",
                      disable=not self.show_progress or len(corpus) <= self.corpus_chunk) as bar:
                for docs in corpus.batches(self.corpus_chunk):
                    chunks.append(self.model.encode_corpus(docs, batch_size=self.batch_size,
                                                           show_progress_bar=self.show_progress,
                                                           **self.encode_kwargs))
                    bar.update(len(docs))
            if self.representation == "sparse":
                return sp.vstack([sp.csr_matrix(c) for c in chunks], format="csr")
            return np.concatenate([np.asarray(c, dtype=np.float32) for c in chunks])
        return encode

    def token_store(self, corpus: Corpus) -> tuple[np.ndarray, np.ndarray]:
        """The corpus's token ids and offsets (see HyperRetrieverModel.tokenize), cached on disk by tokenizer
        content, max length and corpus: re-encoding a corpus after each training run skips tokenization."""
        parts = {"tokenizer": tokenizer_fingerprint(self.model.tokenizer), "corpus": corpus.fingerprint,
                 "n_docs": len(corpus), "max_seq_length": self.model.config.max_seq_length}

        def tokenize() -> tuple[np.ndarray, np.ndarray]:
            ids, offsets, total = [], [np.zeros(1, np.int64)], 0
            for docs in corpus.batches(self.corpus_chunk):
                chunk_ids, chunk_offsets = self.model.tokenize(self.model.passage_texts(docs))
                ids.append(chunk_ids)
                offsets.append(chunk_offsets[1:] + total)
                total += len(chunk_ids)
            return np.concatenate(ids), np.concatenate(offsets)

        return cached_token_store(self.cache_dir, parts, tokenize)[0]

    def encode_queries(self, queries: Sequence[str]) -> Embeddings:
        """Query vectors (n, dim), or CSR (n, vocab) for a sparse model. A model with a prompt pool gives its
        attention in the same pass; it is kept per query text for :meth:`prompt_attention`."""
        kwargs = {"batch_size": self.batch_size, "show_progress_bar": self.show_progress, **self.encode_kwargs}
        if self._has_prompt_pool() and "return_prompt_attention" in inspect.signature(
                self.model.encode_queries).parameters:
            encoded, attention = self.model.encode_queries(list(queries), return_prompt_attention=True, **kwargs)
            self._attention.update(zip(queries, np.asarray(attention, dtype=np.float32), strict=True))
        else:
            encoded = self.model.encode_queries(list(queries), **kwargs)
        return sp.csr_matrix(encoded) if self.representation == "sparse" else np.asarray(encoded, dtype=np.float32)

    def search(self, corpus: Corpus, queries: dict[str, str], k: int) -> tuple[Run, dict[str, Any]]:
        start = time.perf_counter()
        docs, cache_hit = self.encode_corpus(corpus)
        encoded = time.perf_counter()
        query_vectors = self.encode_queries(list(queries.values()))
        info: dict[str, Any] = {"encode_corpus_s": encoded - start, "corpus_cache_hit": cache_hit}
        search_start = time.perf_counter()
        if self.representation == "sparse":
            scores, indices = SparseIndex(docs, self.show_progress).search(query_vectors, k, self.prune_query_terms)
        else:
            index = DenseIndex(docs, kind=self.index_kind, show_progress=self.show_progress)
            scores, indices = index.search(query_vectors, k)
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
        return np.asarray(self.model.prompt_attention(list(queries), batch_size=self.batch_size), dtype=np.float32)


@dataclass
class CollectionResult:
    """What one collection's evaluation produced."""

    name: str
    zero_shot: bool
    metrics: dict[str, float]  # means over the collection's queries
    per_query: dict[str, dict[str, float]]  # query id -> metric -> value
    run: Run
    info: dict[str, Any]  # num_docs, num_queries, timings, index recall


def score_run(name: str, zero_shot: bool, run: Run, collection_qrels: dict[str, dict[str, int]],
              info: dict[str, Any]) -> CollectionResult:
    """The metrics of ``run`` against one collection's judgements."""
    metrics = compute_metrics(run, collection_qrels)
    per_query = metrics.pop("per_query")
    return CollectionResult(name, zero_shot, metrics, per_query, run, info)


def evaluate_collections(searcher: Searcher, collections: Sequence[Collection], zero_shot: set[str], k: int,
                         pooled: bool = False) -> list[CollectionResult]:
    """Searches and scores each collection on its own corpus (BEIR style) or, with ``pooled``, every collection's
    queries against one index of all corpora (KILT style; ids then read ``"<collection>/<id>"``)."""
    if not pooled:
        results = []
        for c in collections:
            run, info = searcher.search(c.corpus, c.queries, k)
            info |= {"num_docs": len(c.corpus), "num_queries": len(c.queries)}
            results.append(score_run(c.name, c.name in zero_shot, run, c.qrels, info))
        return results
    pool = pooled_collection(collections)
    run, info = searcher.search(pool.corpus, pool.queries, k)
    return [score_run(c.name, c.name in zero_shot, split_pooled(run, c.name), split_pooled(pool.qrels, c.name),
                      {**info, "num_docs": len(pool.corpus), "num_queries": len(c.queries), "pooled": True})
            for c in collections]
