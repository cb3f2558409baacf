"""One evaluation, from searcher to the results.json document: the collections searched and scored (alone or
pooled), optionally fused with a lexical searcher (the convex weight given, or chosen on dev collections), the
averages, and the routing diagnostics of a model with a prompt pool. eval.py parses flags, loads, and writes what
this returns."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from hyper_retrieval.data.beir import Collection
from hyper_retrieval.evaluation.hybrid import choose_fusion_weight, evaluate_hybrid
from hyper_retrieval.evaluation.results import build_results
from hyper_retrieval.evaluation.routing import routing_by_collection
from hyper_retrieval.evaluation.scoring import CollectionResult, evaluate_collections
from hyper_retrieval.search.fusion import HybridSearcher
from hyper_retrieval.search.searchers import Searcher


@dataclass
class Fusion:
    """The model's run fused with ``lexical``'s (BM25): convex with ``weight`` (None: the best mean nDCG@10 over the
    ``dev`` collections, each searched on its own corpus), or reciprocal-rank."""

    lexical: Searcher
    kind: Literal["convex", "rrf"] = "convex"
    weight: float | None = None
    dev: Sequence[Collection] = ()
    dev_split: str = "dev"
    label: str = "bm25"  # results.json "hybrid" / "with"


@dataclass
class Evaluation:
    """What :func:`evaluate` gives: the results.json document, each collection's result (runs, per-query values),
    and the queries' attention over the prompt pool with each query's collection (None without a pool of more than
    one prompt)."""

    results: dict[str, Any]
    collections: list[CollectionResult]
    attention: np.ndarray | None = None
    labels: list[str] = field(default_factory=list)


def evaluate(searcher: Searcher, collections: Sequence[Collection], zero_shot: set[str], k: int,
             settings: Mapping[str, Any], pooled: bool = False, fusion: Fusion | None = None) -> Evaluation:
    """Searches and scores ``collections`` (:func:`evaluate_collections`, or :func:`evaluate_hybrid` under
    ``fusion``) and assembles the results document with ``settings``."""
    if fusion is None:
        scored = evaluate_collections(searcher, collections, zero_shot, k, pooled)
        results = build_results(settings, scored)
    else:
        hybrid = HybridSearcher(searcher, fusion.lexical, fusion.kind, depth=k)
        choice: dict[str, Any] = {}
        if fusion.kind == "convex" and fusion.weight is not None:
            hybrid.weight, choice = fusion.weight, {"weight": fusion.weight, "weight_from": "--fusion-weight"}
        elif fusion.kind == "convex":
            hybrid.weight, means = choose_fusion_weight(hybrid, fusion.dev, k)
            choice = {"weight": hybrid.weight, "weight_from": f"{fusion.dev_split} split, mean nDCG@10 of "
                      + ", ".join(c.name for c in fusion.dev), "dev_ndcg@10_by_weight": means}
        scored, variants = evaluate_hybrid(hybrid, collections, zero_shot, k, pooled)
        results = build_results(settings, scored)
        results["hybrid"] = {"with": fusion.label, "fusion": fusion.kind, **choice, "variants": variants}
    if any(r.attention is None for r in scored) or scored[0].attention.shape[1] < 2:
        return Evaluation(results, scored)
    attention = np.concatenate([r.attention for r in scored])
    labels = [r.name for r in scored for _ in range(len(r.attention))]
    results["routing"] = routing_by_collection(attention, labels, zero_shot)
    return Evaluation(results, scored, attention, labels)
