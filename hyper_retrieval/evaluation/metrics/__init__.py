"""Retrieval metrics through the local ``evaluate`` module beside this file (offline, no Hub)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path

import evaluate

from hyper_retrieval.core.types import Run

MODULE_PATH = Path(__file__).with_name("retrieval_metrics.py")


@cache
def load_metric() -> evaluate.EvaluationModule:
    """The retrieval_metrics evaluate module, loaded once per process from its local path."""
    return evaluate.load(str(MODULE_PATH), keep_in_memory=True)


def compute_metrics(run: Run, qrels: Mapping[str, Mapping[str, int]], ndcg_at: Sequence[int] = (10,),
                    recall_at: Sequence[int] = (20, 100), mrr_at: Sequence[int] = (10,)) -> dict:
    """Mean nDCG@k, R-precision, Recall@k and MRR@k over the queries of ``qrels``, as trec_eval computes them.

    Queries of ``qrels`` missing from ``run`` (or with nothing retrieved) count as 0; queries of ``run`` without
    judgements are ignored. Returns {"ndcg@10": float, "r_precision": ..., "recall@20": ..., "recall@100": ...,
    "mrr@10": ..., "num_queries": int, "per_query": {query id: {metric: value}}}.
    """
    if not qrels:
        raise ValueError("qrels is empty: no query to evaluate")
    qids = list(qrels)
    predictions = [{"doc_ids": list(run.get(q, {})), "scores": [float(s) for s in run.get(q, {}).values()]}
                   for q in qids]
    references = [{"doc_ids": list(qrels[q]), "relevance": [int(r) for r in qrels[q].values()]} for q in qids]
    result = load_metric().compute(predictions=predictions, references=references, ndcg_at=list(ndcg_at),
                                   recall_at=list(recall_at), mrr_at=list(mrr_at))
    per_query_lists = result.pop("per_query")
    per_query = {q: {name: values[i] for name, values in per_query_lists.items()} for i, q in enumerate(qids)}
    return {**result, "num_queries": len(qids), "per_query": per_query}
