"""Ranking metrics for retrieval, as a local ``evaluate`` module: nDCG@k, R-precision, Recall@k and MRR@k.

Load it offline with ``evaluate.load("<path>/retrieval_metrics.py")``. One example is one query:

- prediction: ``{"doc_ids": [...], "scores": [...]}``, the retrieved documents and their scores, in any order;
- reference: ``{"doc_ids": [...], "relevance": [...]}``, the judged documents and their integer relevance.

The numbers are trec_eval's, computed by pytrec_eval: the ranking sorts by score descending, then doc id
descending; a document is relevant when its relevance is >= 1; nDCG uses the relevance itself as gain with a
log2(rank + 1) discount, and its ideal ranking takes every judged document; R-precision is the precision at rank R, R
the number of relevant documents; MRR@k is trec_eval's reciprocal rank where the first relevant document is within the
top k, else 0. A query with no retrieved document scores 0 everywhere. The module is self-contained (pytrec_eval,
numpy, datasets, evaluate) because ``evaluate`` copies it into its module cache.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import evaluate
import numpy as np
import pytrec_eval

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


def query_metrics(runs: dict[str, dict[str, float]], judged: dict[str, dict[str, int]], ndcg_at: Sequence[int],
                  recall_at: Sequence[int], mrr_at: Sequence[int]) -> dict[str, dict[str, float]]:
    """{query: {metric: value}} for every query of ``judged``, from pytrec_eval over ``runs`` ({query: {doc id:
    score}}); a query it leaves out (nothing retrieved) scores 0."""
    measures = {f"ndcg_cut.{','.join(map(str, ndcg_at))}", f"recall.{','.join(map(str, recall_at))}", "Rprec",
                "recip_rank"}
    found = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(runs)
    names = {**{f"ndcg@{k}": f"ndcg_cut_{k}" for k in ndcg_at}, "r_precision": "Rprec",
             **{f"recall@{k}": f"recall_{k}" for k in recall_at}}
    out = {}
    for q in judged:
        m = found.get(q)
        if m is None:
            out[q] = dict.fromkeys([*names, *(f"mrr@{k}" for k in mrr_at)], 0.0)
            continue
        first_relevant = round(1 / m["recip_rank"]) if m["recip_rank"] > 0 else None  # its rank
        out[q] = {name: float(m[measure]) for name, measure in names.items()}
        out[q].update({f"mrr@{k}": m["recip_rank"] if first_relevant is not None and first_relevant <= k else 0.0
                       for k in mrr_at})
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
        keys = [str(i) for i in range(len(references))]  # pytrec_eval keys queries by name: the input order
        judged = {k: {d: int(r) for d, r in zip(ref["doc_ids"], ref["relevance"], strict=True)}
                  for k, ref in zip(keys, references, strict=True)}
        runs = {k: {d: float(s) for d, s in zip(pred["doc_ids"], pred["scores"], strict=True)}
                for k, pred in zip(keys, predictions, strict=True) if pred["doc_ids"]}
        values = query_metrics(runs, judged, ndcg_at, recall_at, mrr_at)
        per_query = {name: [values[k][name] for k in keys] for name in values[keys[0]]} if keys else {}
        means = {name: float(np.mean(column)) for name, column in per_query.items()}
        return {**means, "per_query": per_query}
