"""Evaluating a hybrid searcher (search/fusion.py): its convex weight chosen on dev collections, and every variant
(the model alone, BM25 alone, reciprocal-rank and convex fusion) scored from the same searches."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hyper_retrieval.core.types import Run
from hyper_retrieval.data.beir import Collection, Corpus, split_pooled
from hyper_retrieval.evaluation.metrics import compute_metrics
from hyper_retrieval.evaluation.results import build_results
from hyper_retrieval.evaluation.scoring import CollectionResult, evaluate_collections, score_run
from hyper_retrieval.search.fusion import HybridSearcher, choose_weight, convex_fusion, reciprocal_rank_fusion
from hyper_retrieval.search.searchers import SearchResult


def choose_fusion_weight(hybrid: HybridSearcher, dev: Sequence[Collection], k: int, metric: str = "ndcg@10"
                         ) -> tuple[float, dict[float, float]]:
    """The model's convex weight with the best mean ``metric`` over the dev collections (each searched on its own
    corpus), and the mean of every weight tried."""
    sides = [hybrid.search_sides(c.corpus, c.queries, k, [c.name] * len(c.queries)) for c in dev]
    pairs = [(model.run, lexical.run) for model, lexical in sides]
    return choose_weight(pairs, lambda i, run: compute_metrics(run, dev[i].qrels)[metric])


@dataclass
class _SidesKept:
    """The hybrid as a searcher that keeps the two runs of each search."""

    hybrid: HybridSearcher
    sides: list[tuple[Run, Run]] = field(default_factory=list)

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> SearchResult:
        model, lexical = self.hybrid.search_sides(corpus, queries, k, tasks)
        self.sides.append((model.run, lexical.run))
        return self.hybrid.fused(model, lexical, k)


def evaluate_hybrid(hybrid: HybridSearcher, collections: Sequence[Collection], zero_shot: set[str], k: int,
                    pooled: bool = False) -> tuple[list[CollectionResult], dict[str, Any]]:
    """The fused runs' results (as :func:`evaluate_collections`) and the metrics of every variant {"model", "bm25",
    "rrf", "convex"} (collections and averages, as in results.json), from one search per collection (or pool)."""
    searcher = _SidesKept(hybrid)
    results = evaluate_collections(searcher, collections, zero_shot, k, pooled)
    sides = searcher.sides * len(collections) if pooled else searcher.sides
    fusions: dict[str, Callable[[Run, Run], Run]] = {
        "model": lambda m, lex: m, "bm25": lambda m, lex: lex,
        "rrf": lambda m, lex: reciprocal_rank_fusion([m, lex], hybrid.rrf_k, k),
        "convex": lambda m, lex: convex_fusion(m, lex, hybrid.weight, k)}
    variants = {}
    for name, fuse in fusions.items():
        scored = []
        for result, (model_run, lexical_run) in zip(results, sides, strict=True):
            run = split_pooled(fuse(model_run, lexical_run), result.name) if pooled else fuse(model_run, lexical_run)
            scored.append(score_run(result.name, result.zero_shot, run, result.qrels, {}))
        variants[name] = {key: value for key, value in build_results({}, scored).items() if key != "settings"}
    return results, variants
