"""BM25 through bm25s against an independent numpy implementation of Lucene BM25 on the real ropes collection."""

import re

import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp
import Stemmer
from bm25s.stopwords import STOPWORDS_EN

from hyper_retrieval.data.beir import load_collection
from hyper_retrieval.evaluation.metrics import compute_metrics
from hyper_retrieval.search.bm25 import BM25

TOKEN = re.compile(r"(?u)\b\w\w+\b")


def reference_bm25(doc_texts, query_texts, k1, b, k):
    """Lucene BM25 (idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl / avgdl))) by sparse
    matrix algebra over lower-cased, stopword-filtered, Porter2-stemmed tokens. Returns top-k (indices, scores)."""
    stemmer, stop = Stemmer.Stemmer("english"), set(STOPWORDS_EN)

    def tokens(text):
        return stemmer.stemWords([w for w in TOKEN.findall(text.lower()) if w not in stop])

    doc_tokens = [tokens(t) for t in doc_texts]
    vocab = {w: i for i, w in enumerate(sorted({w for d in doc_tokens for w in d}))}

    def counts(token_lists):
        rows = [i for i, d in enumerate(token_lists) for w in d if w in vocab]
        cols = [vocab[w] for d in token_lists for w in d if w in vocab]
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(token_lists), len(vocab)))

    tf = counts(doc_tokens)
    n_docs, lengths = tf.shape[0], np.array([len(d) for d in doc_tokens], dtype=np.float64)
    df = np.bincount(tf.indices, minlength=len(vocab))
    idf = np.log(1 + (n_docs - df + 0.5) / (df + 0.5))
    norm = k1 * (1 - b + b * lengths / lengths.mean())
    weights = tf.tocoo()
    weights.data = idf[weights.col] * weights.data / (weights.data + norm[weights.row])
    scores = (counts([tokens(q) for q in query_texts]) @ weights.T.tocsr()).toarray()
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return top, np.take_along_axis(scores, top, axis=1)


@pytest.mark.parametrize("k1, b, readme_ndcg", [(0.9, 0.4, 0.741), (1.5, 0.75, 0.755)])
def test_ropes_matches_reference_bm25(bbir, k1, b, readme_ndcg):
    collection = load_collection(bbir / "ropes", "test")
    ids = collection.corpus.ids
    docs = collection.corpus.get_many(ids)
    run = BM25(ids, docs, k1=k1, b=b).search(collection.queries, k=100)

    top, scores = reference_bm25([f"{d['title']} {d['text']}" for d in docs], list(collection.queries.values()),
                                 k1, b, 100)
    reference_run = {q: {ids[j]: float(s) for j, s in zip(top[i], scores[i], strict=True) if s > 0}
                     for i, q in enumerate(collection.queries)}
    evaluator = pytrec_eval.RelevanceEvaluator(collection.qrels, {"ndcg_cut.10"})
    reference_ndcg = np.mean([m["ndcg_cut_10"] for m in evaluator.evaluate(reference_run).values()])

    ours = compute_metrics(run, collection.qrels)["ndcg@10"]
    assert ours == pytest.approx(reference_ndcg, abs=0.02)
    assert ours == pytest.approx(readme_ndcg, abs=0.005)
    # Same scoring function: each query's best document gets the same score from both.
    first = [q for q in collection.queries if run[q]]
    best_ours = np.array([max(run[q].values()) for q in first])
    best_ref = np.array([max(reference_run[q].values()) for q in first])
    np.testing.assert_allclose(best_ours, best_ref, rtol=1e-4)


def test_search_output_format_and_k():
    docs = [{"title": "", "text": "the cat sat on the mat"}, {"title": "Dogs", "text": "dogs bark loudly"},
            {"title": "", "text": "a cat and a dog"}]
    run = BM25(["a", "b", "c"], docs).search({"q1": "cats", "q2": "barking dog", "q3": "zebra"}, k=2)
    assert set(run) == {"q1", "q2", "q3"}
    assert set(run["q1"]) == {"a", "c"} and run["q3"] == {}
    assert list(run["q2"])[0] == "b" and all(isinstance(s, float) for s in run["q2"].values())
