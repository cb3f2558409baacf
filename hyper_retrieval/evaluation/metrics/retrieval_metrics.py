"""Ranking metrics for retrieval, as a local ``evaluate`` module: nDCG@k, R-precision, Recall@k and MRR@k.

Load it offline with ``evaluate.load("<path>/retrieval_metrics.py")``. One example is one query:

- prediction: ``{"doc_ids": [...], "scores": [...]}``, the retrieved documents and their scores, in any order;
- reference: ``{"doc_ids": [...], "relevance": [...]}``, the judged documents and their integer relevance.

Definitions follow trec_eval (and so pytrec_eval): the ranking sorts by score descending, then doc id descending;
a document is relevant when its relevance is >= 1; nDCG uses the relevance itself as gain with a log2(rank + 1)
discount, and its ideal ranking takes every judged document; R-precision is the precision at rank R, R the number of
relevant documents; MRR@k is the reciprocal rank of the first relevant document within the top k, else 0. A query
with no retrieved document scores 0 everywhere. The module is self-contained (numpy, datasets, evaluate) because
``evaluate`` copies it into its module cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{trec_eval, title={trec_eval}, author={NIST}, url={https://github.com/usnistgov/trec_eval}}
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per query, {"doc_ids": list[str], "scores": list[float]}.
    references: per query, {"doc_ids": list[str], "relevance": list[int]}.
    ndcg_at, recall_at, mrr_at: cut-offs (defaults (10,), (20, 100), (10,)).
Returns:
    {"ndcg@10": mean, "r_precision": mean, "recall@20": mean, "recall@100": mean, "mrr@10": mean,
     "per_query": {metric name: list of per-query values, in input order}}
"""


def rank(doc_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """Doc ids in trec_eval order: score descending, ties broken by doc id descending."""
    return [d for _, d in sorted(zip(scores, doc_ids, strict=True), reverse=True)]


def query_metrics(ranking: Sequence[str], judged: dict[str, int], ndcg_at: Sequence[int], recall_at: Sequence[int],
                  mrr_at: Sequence[int]) -> dict[str, float]:
    """All metrics of one query from its ranked doc ids and its judgements {doc id: relevance}."""
    gains = np.array([max(judged.get(d, 0), 0) for d in ranking], dtype=np.float64)  # (n_retrieved,)
    relevant = gains >= 1
    n_relevant = sum(1 for r in judged.values() if r >= 1)
    ideal = np.sort(np.array([r for r in judged.values() if r > 0], dtype=np.float64))[::-1]
    out: dict[str, float] = {}
    for k in ndcg_at:
        discounts = 1.0 / np.log2(np.arange(2, k + 2))  # (k,)
        idcg = float(ideal[:k] @ discounts[: min(k, len(ideal))])
        dcg = float(gains[:k] @ discounts[: min(k, len(gains))])
        out[f"ndcg@{k}"] = dcg / idcg if idcg > 0 else 0.0
    out["r_precision"] = float(relevant[:n_relevant].sum()) / n_relevant if n_relevant else 0.0
    for k in recall_at:
        out[f"recall@{k}"] = float(relevant[:k].sum()) / n_relevant if n_relevant else 0.0
    for k in mrr_at:
        hits = np.flatnonzero(relevant[:k])
        out[f"mrr@{k}"] = 1.0 / float(hits[0] + 1) if len(hits) else 0.0
    return out


@evaluate.utils.file_utils.add_start_docstrings(__doc__, _KWARGS_DESCRIPTION)
class RetrievalMetrics(evaluate.Metric):
    """nDCG@k, R-precision, Recall@k and MRR@k over queries, matching trec_eval."""

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=__doc__,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": {"doc_ids": datasets.Sequence(datasets.Value("string")),
                                "scores": datasets.Sequence(datasets.Value("float64"))},
                "references": {"doc_ids": datasets.Sequence(datasets.Value("string")),
                               "relevance": datasets.Sequence(datasets.Value("int64"))},
            }),
            reference_urls=["https://github.com/usnistgov/trec_eval"],
        )

    def _compute(self, predictions: list[dict], references: list[dict], ndcg_at: Sequence[int] = (10,),
                 recall_at: Sequence[int] = (20, 100), mrr_at: Sequence[int] = (10,)) -> dict:
        per_query: dict[str, list[float]] = {}
        for prediction, reference in zip(predictions, references, strict=True):
            judged = dict(zip(reference["doc_ids"], reference["relevance"], strict=True))
            values = query_metrics(rank(prediction["doc_ids"], prediction["scores"]), judged, ndcg_at, recall_at,
                                   mrr_at)
            for name, value in values.items():
                per_query.setdefault(name, []).append(value)
        means = {name: float(np.mean(values)) for name, values in per_query.items()}
        return {**means, "per_query": per_query}
