"""Hybrid retrieval: a lexical run (BM25) and a model's run fused into one ranking.

- reciprocal-rank fusion (Cormack et al., 2009): score(d) = sum over runs of 1 / (k + rank(d)), ranks from 1;
- convex fusion: score(d) = w * model(d) + (1 - w) * lexical(d), each run's scores min-max normalised per query
  (a document missing from a run gets 0 there), with the weight w chosen on a dev split (:func:`choose_weight`).

:class:`HybridSearcher` is a searcher (searchers.Searcher) over any corpus: two searchers in, fused runs out.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from hyper_retrieval.core.types import Run
from hyper_retrieval.data.beir import Corpus
from hyper_retrieval.search.searchers import Searcher, SearchResult

RRF_K = 60  # the constant of Cormack et al.
WEIGHT_GRID = tuple(round(w, 2) for w in np.linspace(0.0, 1.0, 21))  # model weights tried on dev


def _top(scores: Mapping[str, float], depth: int | None) -> dict[str, float]:
    ranked = sorted(scores.items(), key=lambda item: (-item[1], item[0]))
    return dict(ranked[:depth] if depth else ranked)


def reciprocal_rank_fusion(runs: Sequence[Run], k: int = RRF_K, depth: int | None = None) -> Run:
    """RRF of runs {query id: {doc id: score}}: each document gets sum 1 / (k + its rank in a run), rank 1 the
    best (ties broken by doc id); a run that lacks the document adds nothing. The best ``depth`` kept per query."""
    fused: Run = {}
    for run in runs:
        for qid, scores in run.items():
            target = fused.setdefault(qid, {})
            for rank, doc_id in enumerate(_top(scores, None), start=1):
                target[doc_id] = target.get(doc_id, 0.0) + 1.0 / (k + rank)
    return {qid: _top(scores, depth) for qid, scores in fused.items()}


def min_max(scores: Mapping[str, float]) -> dict[str, float]:
    """A query's scores mapped onto [0, 1] (best 1, worst 0); all equal: all 1."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    return {d: (s - low) / (high - low) if high > low else 1.0 for d, s in scores.items()}


def convex_fusion(model: Run, lexical: Run, weight: float, depth: int | None = None) -> Run:
    """weight * min-max(model) + (1 - weight) * min-max(lexical) per query; a document absent from a run scores 0
    there. The best ``depth`` kept per query."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight {weight}: expected a value in [0, 1]")
    fused: Run = {}
    for qid in model.keys() | lexical.keys():
        a, b = min_max(model.get(qid, {})), min_max(lexical.get(qid, {}))
        fused[qid] = _top({d: weight * a.get(d, 0.0) + (1 - weight) * b.get(d, 0.0) for d in a.keys() | b.keys()},
                          depth)
    return fused


def choose_weight(pairs: Sequence[tuple[Run, Run]], score: Callable[[int, Run], float],
                  grid: Sequence[float] = WEIGHT_GRID) -> tuple[float, dict[float, float]]:
    """The model weight of convex fusion that maximises the mean of ``score(i, fused run of pairs[i])`` over the
    (model run, lexical run) pairs, e.g. nDCG@10 on each in-domain collection's dev split. Returns the weight and
    the mean score of every weight tried; ties go to the weight nearest 0.5."""
    means = {w: float(np.mean([score(i, convex_fusion(m, lex, w)) for i, (m, lex) in enumerate(pairs)]))
             for w in grid}
    best = max(means.values())
    return min((w for w, v in means.items() if v == best), key=lambda w: abs(w - 0.5)), means


@dataclass
class HybridSearcher:
    """A model searcher and a lexical one (BM25) over the same corpus, their runs fused.

        hybrid = HybridSearcher(ModelSearcher(CorpusEncoder(model, "my-model")), BM25Searcher(), weight=0.4)
        result = hybrid.search(Corpus.from_records(docs), {"q1": "who wrote ..."}, k=10)

    Each side retrieves ``depth`` documents (at least k) before fusion; :meth:`search_sides` gives the two runs
    unfused, to fuse them in several ways without searching again.
    """

    model: Searcher
    lexical: Searcher
    fusion: Literal["convex", "rrf"] = "convex"
    weight: float = 0.5  # convex: the model's share
    rrf_k: int = RRF_K
    depth: int = 100

    def __post_init__(self) -> None:
        if self.fusion not in ("convex", "rrf"):
            raise ValueError(f"fusion {self.fusion!r}: expected 'convex' or 'rrf'")
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"fusion weight {self.weight}: expected a value in [0, 1]")

    def search(self, corpus: Corpus, queries: dict[str, str], k: int,
               tasks: Sequence[str] | None = None) -> SearchResult:
        return self.fused(*self.search_sides(corpus, queries, k, tasks), k)

    def search_sides(self, corpus: Corpus, queries: dict[str, str], k: int,
                     tasks: Sequence[str] | None = None) -> tuple[SearchResult, SearchResult]:
        """The model's search and the lexical one (``depth`` documents each, at least k); the model's info also
        holds the lexical side's facts (prefixed ``lexical_``) and the fusion settings."""
        depth = max(k, self.depth)
        model = self.model.search(corpus, queries, depth, tasks)
        lexical = self.lexical.search(corpus, queries, depth)
        model.info |= {**{f"lexical_{key}": value for key, value in lexical.info.items()}, "fusion": self.fusion,
                       **({"fusion_weight": self.weight} if self.fusion == "convex" else {})}
        return model, lexical

    def fused(self, model: SearchResult, lexical: SearchResult, k: int) -> SearchResult:
        """The two sides' search results as one: the fused run, the model side's facts and prompt attention."""
        return SearchResult(self.fuse(model.run, lexical.run, k), model.info, model.attention)

    def fuse(self, model_run: Run, lexical_run: Run, k: int) -> Run:
        """The two runs fused as this searcher is set to, k documents per query."""
        if self.fusion == "rrf":
            return reciprocal_rank_fusion([model_run, lexical_run], self.rrf_k, k)
        return convex_fusion(model_run, lexical_run, self.weight, k)
