"""Hybrid retrieval: BM25 fused with a model, by reciprocal ranks or a dev-chosen convex combination."""

import json

import pytest
from sample_collection import sample_of
from test_eval_cli import assert_metrics_equal, load_eval_module

from hyper_retrieval.data.beir import Corpus, load_collection
from hyper_retrieval.evaluation.metrics import compute_metrics
from hyper_retrieval.evaluation.results import read_trec_run
from hyper_retrieval.search.corpus_encoder import CorpusEncoder
from hyper_retrieval.search.fusion import HybridSearcher, choose_weight, convex_fusion, reciprocal_rank_fusion
from hyper_retrieval.search.searchers import BM25Searcher, ModelSearcher

MODEL = {"q": {"d1": 3.0, "d2": 2.0, "d3": 1.0}}
LEXICAL = {"q": {"d3": 10.0, "d1": 5.0, "d4": 1.0}}


def test_reciprocal_rank_fusion_by_hand():
    fused = reciprocal_rank_fusion([MODEL, LEXICAL], k=60)["q"]
    assert fused == pytest.approx({"d1": 1 / 61 + 1 / 62, "d3": 1 / 63 + 1 / 61, "d2": 1 / 62, "d4": 1 / 63})
    assert list(fused) == ["d1", "d3", "d2", "d4"]
    assert list(reciprocal_rank_fusion([MODEL, LEXICAL], k=60, depth=2)["q"]) == ["d1", "d3"]


def test_convex_fusion_by_hand():
    # min-max per query: model d1 1, d2 0.5, d3 0; lexical d3 1, d1 4/9, d4 0; a missing document counts 0
    fused = convex_fusion(MODEL, LEXICAL, weight=0.3)["q"]
    assert fused == pytest.approx({"d3": 0.7, "d1": 0.3 + 0.7 * 4 / 9, "d2": 0.15, "d4": 0.0})
    assert list(fused) == ["d3", "d1", "d2", "d4"]
    assert list(convex_fusion(MODEL, LEXICAL, 1.0)["q"])[:3] == ["d1", "d2", "d3"]
    with pytest.raises(ValueError, match="fusion weight 1.5"):
        convex_fusion(MODEL, LEXICAL, 1.5)


def test_choose_weight_follows_the_judgements():
    lexical_right = {"q": {"d3": 1}}
    weight, means = choose_weight([(MODEL, LEXICAL)], lambda i, run: compute_metrics(run, lexical_right)["ndcg@10"])
    assert means[weight] == max(means.values()) and weight < 0.5  # d3 leads only where BM25 weighs more
    weight, _ = choose_weight([(MODEL, LEXICAL)], lambda i, run: compute_metrics(run, {"q": {"d2": 1}})["ndcg@10"])
    assert weight > 0.5


def test_hybrid_searcher_on_a_users_own_corpus(minilm_path):
    from modeling_hyper import HyperRetrieverModel

    corpus = Corpus.from_records([
        {"_id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
        {"_id": "berlin", "title": "Berlin", "text": "Berlin is the capital of Germany."},
        {"_id": "bread", "title": "", "text": "A baguette is a long, thin loaf of French bread."},
    ])
    queries = {"q1": "What is the capital of France?", "q2": "french bread"}
    model = ModelSearcher(CorpusEncoder(HyperRetrieverModel.from_backbone(minilm_path), "minilm", show_progress=False))
    hybrid = HybridSearcher(model, BM25Searcher(show_progress=False), fusion="convex", weight=0.4)
    found = hybrid.search(corpus, queries, k=2)
    run, info = found.run, found.info
    assert max(run["q1"], key=run["q1"].get) == "paris" and max(run["q2"], key=run["q2"].get) == "bread"
    model, lexical = hybrid.search_sides(corpus, queries, k=2)
    model_run, lexical_run = model.run, lexical.run
    assert run == convex_fusion(model_run, lexical_run, 0.4, 2) and info["fusion_weight"] == 0.4
    assert all(len(docs) == 2 for docs in run.values())
    with pytest.raises(ValueError, match="fusion 'sum'"):
        HybridSearcher(model, BM25Searcher(), fusion="sum")


@pytest.fixture(scope="module")
def dev_and_test(bbir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hybrid")
    return (sample_of(bbir / "ropes", root / "ropes", 60, "test", "dev"),
            sample_of(bbir / "multirc", root / "multirc", 40, "test", "dev"))


@pytest.fixture(scope="module")
def saved_model(minilm_path, tmp_path_factory):
    from modeling_hyper import HyperRetrieverModel

    folder = tmp_path_factory.mktemp("minilm") / "model"
    HyperRetrieverModel.from_backbone(minilm_path, max_seq_length=128).save_pretrained(folder)
    return str(folder)


def test_eval_hybrid_chooses_the_weight_on_dev_and_reports_every_variant(dev_and_test, saved_model, tmp_path):
    eval_cli = load_eval_module()
    ropes, multirc = dev_and_test
    common = ["--data", str(ropes), "--zero-shot", str(multirc), "--cache-dir", "", "--no-progress"]
    eval_cli.main(["--model", saved_model, *common, "--hybrid", "bm25", "--out", str(tmp_path / "h")])
    eval_cli.main(["--model", saved_model, *common, "--out", str(tmp_path / "alone")])
    eval_cli.main(["--model", "bm25", *common, "--out", str(tmp_path / "bm25")])
    results = json.loads((tmp_path / "h" / "results.json").read_text())
    hybrid = results["hybrid"]
    by_weight = {float(w): v for w, v in hybrid["dev_ndcg@10_by_weight"].items()}
    assert len(by_weight) == 21 and by_weight[hybrid["weight"]] == max(by_weight.values())
    assert hybrid["weight_from"].startswith("dev split") and "ropes" in hybrid["weight_from"]
    assert "multirc" not in hybrid["weight_from"]  # zero-shot collections do not choose the weight

    # the fused run on disk is the convex fusion of the two systems' runs, at the chosen weight
    for name in ("ropes", "multirc"):
        collection = load_collection(dev_and_test[name == "multirc"], "test")
        fused = read_trec_run(tmp_path / "h" / "runs" / f"{name}.trec")
        model_run = read_trec_run(tmp_path / "alone" / "runs" / f"{name}.trec")
        bm25_run = read_trec_run(tmp_path / "bm25" / "runs" / f"{name}.trec")
        expected = convex_fusion(model_run, bm25_run, hybrid["weight"], 100)
        assert {q: list(d) for q, d in fused.items()} == {q: list(d) for q, d in expected.items()}
        assert_metrics_equal(results["collections"][name]["metrics"], compute_metrics(expected, collection.qrels))
        rrf = reciprocal_rank_fusion([model_run, bm25_run], depth=100)
        assert_metrics_equal(hybrid["variants"]["rrf"]["collections"][name]["metrics"],
                             compute_metrics(rrf, collection.qrels))
        for variant, alone in (("model", "alone"), ("bm25", "bm25")):
            separate = json.loads((tmp_path / alone / "results.json").read_text())["collections"][name]["metrics"]
            assert_metrics_equal(hybrid["variants"][variant]["collections"][name]["metrics"], separate)


def test_eval_hybrid_with_zero_shot_collections_alone_needs_a_weight(dev_and_test, saved_model, tmp_path):
    eval_cli = load_eval_module()
    args = ["--model", saved_model, "--zero-shot", str(dev_and_test[1]), "--hybrid", "bm25", "--cache-dir", "",
            "--no-progress"]
    with pytest.raises(SystemExit, match="give --fusion-weight"):
        eval_cli.main([*args, "--out", str(tmp_path / "a")])
    eval_cli.main([*args, "--fusion-weight", "0.3", "--out", str(tmp_path / "b")])
    hybrid = json.loads((tmp_path / "b" / "results.json").read_text())["hybrid"]
    assert hybrid["weight"] == 0.3 and hybrid["weight_from"] == "--fusion-weight"
