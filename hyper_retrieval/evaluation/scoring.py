"""Evaluating retrieval over collections: a searcher (search/searchers.py) per collection or over their pooled corpus,
then the metrics per collection."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hyper_retrieval.data.beir import Collection, pooled_collection, split_pooled
from hyper_retrieval.evaluation.metrics import compute_metrics
from hyper_retrieval.search.index import Run
from hyper_retrieval.search.searchers import Searcher


@dataclass
class CollectionResult:
    """What one collection's evaluation produced."""

    name: str
    zero_shot: bool
    metrics: dict[str, float]  # means over the collection's queries
    per_query: dict[str, dict[str, float]]  # query id -> metric -> value
    run: Run
    info: dict[str, Any]  # num_docs, num_queries, timings, index recall
    qrels: dict[str, dict[str, int]] = field(default_factory=dict)  # what it was scored against (ids as in the run)
    attention: np.ndarray | None = None  # (queries, N) over the prompt pool, in query order, for a model with one


def score_run(name: str, zero_shot: bool, run: Run, collection_qrels: dict[str, dict[str, int]],
              info: dict[str, Any], attention: np.ndarray | None = None) -> CollectionResult:
    """The metrics of ``run`` against one collection's judgements."""
    metrics = compute_metrics(run, collection_qrels)
    per_query = metrics.pop("per_query")
    return CollectionResult(name, zero_shot, metrics, per_query, run, info, dict(collection_qrels), attention)


def evaluate_collections(searcher: Searcher, collections: Sequence[Collection], zero_shot: set[str], k: int,
                         pooled: bool = False) -> list[CollectionResult]:
    """Searches and scores each collection on its own corpus (BEIR style) or, with ``pooled``, every collection's
    queries against one index of all corpora (KILT style; ids then read ``"<collection>/<id>"``). A query's task is
    its collection's name (what a pool routed by task reads)."""
    if not pooled:
        results = []
        for c in collections:
            found = searcher.search(c.corpus, c.queries, k, [c.name] * len(c.queries))
            info = found.info | {"num_docs": len(c.corpus), "num_queries": len(c.queries)}
            results.append(score_run(c.name, c.name in zero_shot, found.run, c.qrels, info, found.attention))
        return results
    pool = pooled_collection(collections)
    found = searcher.search(pool.corpus, pool.queries, k, [c.name for c in collections for _ in c.queries])
    starts = np.cumsum([0, *(len(c.queries) for c in collections)])  # the pool's queries: the collections' in order
    return [score_run(c.name, c.name in zero_shot, split_pooled(found.run, c.name), split_pooled(pool.qrels, c.name),
                      {**found.info, "num_docs": len(pool.corpus), "num_queries": len(c.queries), "pooled": True},
                      None if found.attention is None else found.attention[start:end])
            for c, start, end in zip(collections, starts[:-1], starts[1:], strict=True)]
