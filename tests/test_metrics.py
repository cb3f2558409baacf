"""The evaluate-module metrics equal pytrec_eval's (trec_eval's) on hand-made and real runs."""

import random

import evaluate
import pytest
import pytrec_eval

from hyper_retrieval.data.beir import load_collection
from hyper_retrieval.evaluation.metrics import MODULE_PATH, compute_metrics, load_metric
from hyper_retrieval.search.bm25 import BM25

MEASURES = {"ndcg_cut.10", "recall.20,100", "Rprec", "recip_rank"}


def reference(run, qrels):
    """Per-query metrics from pytrec_eval; queries it leaves out (nothing retrieved) count as 0.
    MRR@10 is trec_eval's reciprocal rank, zeroed when the first relevant document is below rank 10."""
    per_query = pytrec_eval.RelevanceEvaluator(qrels, MEASURES).evaluate(run)
    out = {}
    for q in qrels:
        m = per_query.get(q)
        out[q] = {"ndcg@10": m["ndcg_cut_10"], "r_precision": m["Rprec"], "recall@20": m["recall_20"],
                  "recall@100": m["recall_100"], "mrr@10": m["recip_rank"] if m["recip_rank"] >= 0.1 else 0.0,
                  } if m else dict.fromkeys(("ndcg@10", "r_precision", "recall@20", "recall@100", "mrr@10"), 0.0)
    return out


def assert_matches_reference(run, qrels):
    ours = compute_metrics(run, qrels)
    expected = reference(run, qrels)
    for q in qrels:
        assert ours["per_query"][q] == pytest.approx(expected[q], abs=1e-4), q
    for name in ("ndcg@10", "r_precision", "recall@20", "recall@100", "mrr@10"):
        assert ours[name] == pytest.approx(sum(e[name] for e in expected.values()) / len(qrels), abs=1e-4)
    assert ours["num_queries"] == len(qrels)
    return ours


def test_hand_made_runs_with_ties_misses_and_several_golds():
    qrels = {
        "ties": {"d1": 1, "d3": 1},  # d1..d4 share a score: doc id decides (descending)
        "graded": {"a": 2, "b": 1, "c": 1, "zz": 3},  # several golds, graded, one never retrieved
        "miss": {"gold": 1},  # nothing relevant retrieved
        "late": {"x15": 1},  # first relevant at rank 15: MRR@10 0, Recall@20 1
        "absent": {"d1": 1},  # in qrels, not in the run: counts as 0
        "unjudged_zero": {"d2": 0, "d4": 1},
    }
    run = {
        "ties": {"d1": 1.0, "d2": 1.0, "d3": 1.0, "d4": 1.0, "d5": 2.0},
        "graded": {"c": 0.9, "a": 0.5, "b": 0.5, "n1": 0.95, "n2": 0.1},
        "miss": {f"n{i}": 1.0 / (i + 1) for i in range(30)},
        "late": {f"x{i:02d}": 100.0 - i for i in range(30)},
        "unjudged_zero": {"d2": 3.0, "d4": 3.0, "d9": 5.0},
        "not_in_qrels": {"d1": 1.0},  # ignored
    }
    ours = assert_matches_reference(run, qrels)
    assert ours["per_query"]["absent"]["ndcg@10"] == 0.0
    assert ours["per_query"]["late"]["mrr@10"] == 0.0 and ours["per_query"]["late"]["recall@20"] == 1.0
    assert 0 < ours["per_query"]["ties"]["ndcg@10"] < 1


def test_tie_breaking_is_doc_id_descending():
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0}}
    # With equal scores trec_eval ranks 'c' > 'b' > 'a'.
    assert compute_metrics(run, {"q": {"a": 1}})["mrr@10"] == pytest.approx(1 / 3)
    assert compute_metrics(run, {"q": {"c": 1}})["mrr@10"] == pytest.approx(1.0)
    assert_matches_reference(run, {"q": {"a": 1}})


def test_random_runs_with_many_ties():
    rng = random.Random(0)
    docs = [f"d{i}" for i in range(60)]
    qrels = {f"q{i}": {d: rng.choice([1, 1, 2]) for d in rng.sample(docs, rng.randint(1, 5))} for i in range(80)}
    run = {q: {d: float(rng.randint(0, 6)) for d in rng.sample(docs, rng.randint(0, 40))} for q in qrels}
    assert_matches_reference({q: r for q, r in run.items() if r}, qrels)


def test_real_bm25_run_on_a_bbir_collection(bbir):
    collection = load_collection(bbir / "multirc", "test")
    run = BM25(collection.corpus.ids, collection.corpus.get_many(collection.corpus.ids)).search(collection.queries)
    ours = assert_matches_reference(run, collection.qrels)
    assert ours["ndcg@10"] == pytest.approx(0.942, abs=0.005)  # the data README's value for k1 0.9, b 0.4


def test_goes_through_a_local_evaluate_module():
    metric = load_metric()
    assert isinstance(metric, evaluate.EvaluationModule)
    direct = evaluate.load(str(MODULE_PATH)).compute(
        predictions=[{"doc_ids": ["a", "b"], "scores": [0.1, 0.9]}],
        references=[{"doc_ids": ["a"], "relevance": [1]}])
    assert direct["mrr@10"] == pytest.approx(0.5)
    assert direct["per_query"]["recall@20"] == [1.0]


def test_empty_qrels_is_an_error():
    with pytest.raises(ValueError, match="qrels is empty"):
        compute_metrics({"q": {"a": 1.0}}, {})
