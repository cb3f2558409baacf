"""Hard negatives: gold passages never mined as negatives (real qasc data), the cache is reused and invalidated."""

from pathlib import Path

import numpy as np
import pytest

from hyper_retrieval.data.beir import Collection, load_collection
from hyper_retrieval.search.bm25 import BM25
from hyper_retrieval.training import negatives as neg
from hyper_retrieval.training.examples import first_queries


@pytest.fixture(scope="module")
def qasc(bbir: Path) -> Collection:
    return first_queries(load_collection(bbir / "qasc", "train"), 400)


def test_gold_passages_never_appear_among_bm25_negatives(qasc: Collection, tmp_path: Path) -> None:
    settings = neg.BM25Settings(depth=20)
    mined = neg.bm25_negatives(qasc, tmp_path, settings)
    gold = neg.gold_ids(qasc)
    assert set(mined) == set(qasc.qrels)
    for qid, negatives in mined.items():
        positives = {d for d, s in qasc.qrels[qid].items() if s > 0}
        assert positives <= gold[qid]
        assert not set(negatives) & gold[qid], qid
        assert len(negatives) == len(set(negatives)) and 0 < len(negatives) <= 20
    assert any(len(g) > 1 for g in gold.values())  # qasc has unmarked twins of gold passages: they are gold too

    # without the filter, BM25 ranks the gold passage in its top 20 for most qasc queries
    docs = [d for batch in qasc.corpus.batches(10_000) for d in batch]
    run = BM25(qasc.corpus.ids, docs, k1=settings.k1, b=settings.b).search(qasc.queries, k=20)
    assert sum(bool(set(run[q]) & set(qasc.qrels[q])) for q in run) > 0.8 * len(run)
    # and the kept negatives are BM25's order minus gold (mining retrieves deeper, then keeps 20)
    for qid in list(run)[:50]:
        ranked = [d for d in run[qid] if d not in gold[qid]]
        assert mined[qid][: len(ranked) - 1] == ranked[:-1]  # the last slot may differ by a tie


def test_cache_is_reused_and_invalidated_when_settings_or_data_change(
        qasc: Collection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    mine = neg._mine_bm25

    def counting_mine(collection: Collection, settings: neg.BM25Settings) -> neg.Negatives:
        calls.append(settings)
        return mine(collection, settings)

    monkeypatch.setattr(neg, "_mine_bm25", counting_mine)
    small = first_queries(qasc, 50)
    first = neg.bm25_negatives(small, tmp_path, neg.BM25Settings(depth=10))
    again = neg.bm25_negatives(small, tmp_path, neg.BM25Settings(depth=10))
    assert len(calls) == 1 and again == first  # read back from disk, not mined again
    files = sorted(tmp_path.iterdir())
    assert len(files) == 1 and files[0].name.startswith("qasc-bm25-") and files[0].suffix == ".json"

    neg.bm25_negatives(small, tmp_path, neg.BM25Settings(depth=10, k1=0.9))  # other settings
    assert len(calls) == 2
    neg.bm25_negatives(first_queries(qasc, 60), tmp_path, neg.BM25Settings(depth=10))  # other queries
    assert len(calls) == 3
    assert len(list(tmp_path.glob("*.json"))) == 3 and not list(tmp_path.glob("*.tmp"))  # no half-written files

    # a file holding another key under the same name is not trusted
    files[0].write_text('{"key": {"version": 0}, "negatives": {}}')
    assert neg.bm25_negatives(small, tmp_path, neg.BM25Settings(depth=10)) == first
    assert len(calls) == 4
    for damaged in (files[0].read_text()[:100], "[1, 2]"):  # truncated, or not the object written
        files[0].write_text(damaged)
        assert neg.bm25_negatives(small, tmp_path, neg.BM25Settings(depth=10)) == first
    assert len(calls) == 6


def test_dense_negatives_rank_by_inner_product_and_drop_gold() -> None:
    rng = np.random.default_rng(0)
    docs, queries = rng.normal(size=(50, 8)), rng.normal(size=(5, 8))
    doc_ids = [f"d{i}" for i in range(50)]
    order = np.argsort(-(queries @ docs.T), axis=1)
    gold = {"q0": {doc_ids[order[0, 0]], doc_ids[order[0, 2]]}}
    mined = neg.dense_negatives([f"q{i}" for i in range(5)], queries, doc_ids, docs, gold, depth=4)
    assert mined["q0"] == [doc_ids[j] for j in order[0] if doc_ids[j] not in gold["q0"]][:4]
    assert mined["q3"] == [doc_ids[j] for j in order[3, :4]]
