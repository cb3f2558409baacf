"""BM25 through bm25s against an independent numpy implementation of Lucene BM25 on the real ropes collection, and
BM25 kept off the accelerator when JAX is installed (a stand-in jax package on the path of a fresh interpreter)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import pytrec_eval
import scipy.sparse as sp
import Stemmer

from hyper_retrieval.data.beir import load_collection
from hyper_retrieval.evaluation.metrics import compute_metrics
from hyper_retrieval.search.bm25 import BM25

TOKEN = re.compile(r"(?u)\b\w\w+\b")


def reference_bm25(doc_texts, query_texts, k1, b, k):
    """Lucene BM25 (idf = ln(1 + (N - df + 0.5) / (df + 0.5)), tf / (tf + k1 (1 - b + b dl / avgdl))) by sparse
    matrix algebra over lower-cased, stopword-filtered, Porter2-stemmed tokens. Returns top-k (indices, scores)."""
    from bm25s.stopwords import STOPWORDS_EN  # here: bm25s is first imported through hyper_retrieval.search.bm25

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


# A stand-in for jax: records (as JSON lines, into the file named by $FAKE_JAX_LOG) the JAX settings it finds when it
# is imported and every top_k it is asked for, and answers top_k with numpy so that bm25s works whatever it calls.
FAKE_JAX = {
    "__init__.py": """
        import json
        import os

        IS_STAND_IN = True


        def record(event):
            event.update({name: os.environ.get(name) for name in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE")})
            with open(os.environ["FAKE_JAX_LOG"], "a") as log:
                log.write(json.dumps(event) + "\\n")


        record({"event": "import"})

        from . import lax, numpy  # noqa: E402
        """,
    "lax.py": """
        import numpy as np

        import jax


        def top_k(operand, k):
            jax.record({"event": "top_k", "k": int(k)})
            operand = np.asarray(operand)
            indices = np.argsort(-operand, axis=-1, kind="stable")[..., :k]
            return np.take_along_axis(operand, indices, axis=-1), indices
        """,
    "numpy.py": """
        from numpy import *  # noqa: F403
        """,
}

DOCS = [{"title": "Cats", "text": "the cat sat on the mat"}, {"title": "", "text": "dogs bark loudly at night"},
        {"title": "", "text": "a cat and a dog play"}, {"title": "Birds", "text": "birds sing at dawn"},
        {"title": "", "text": "the dog chased the cat up a tree"}]
QUERIES = {"q1": "cat", "q2": "barking dog at night", "q3": "zebra", "q4": "birds and cats"}

# The fresh interpreter: imports the BM25 module (and through it bm25s, which finds the stand-in jax), marks the start
# of the search in the log, builds a BM25 and searches; writes the run and what bm25s made of jax.
CHILD = """
import json, os, sys

from hyper_retrieval.search.bm25 import BM25
import bm25s.selection
import jax

docs, queries, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
jax.record({"event": "search"})
run = BM25([f"d{i}" for i in range(len(docs))], docs).search(queries, k=3)
with open(out, "w") as f:
    json.dump({"run": {q: list(hits.items()) for q, hits in run.items()},
               "stand_in": getattr(jax, "IS_STAND_IN", False), "jax_available": bm25s.selection.JAX_IS_AVAILABLE}, f)
"""


def search_with_stand_in_jax(tmp_path: Path, **jax_env: str) -> tuple[dict, list[dict]]:
    """Runs CHILD with the stand-in jax first on the path and `jax_env` as the only JAX settings; returns its output
    and the stand-in's log."""
    package = tmp_path / "fake" / "jax"
    package.mkdir(parents=True)
    for name, text in FAKE_JAX.items():
        (package / name).write_text(textwrap.dedent(text))
    repo = Path(__file__).resolve().parents[1]
    log, out = tmp_path / "jax.log", tmp_path / "out.json"
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_PYTHON_CLIENT_PREALLOCATE")}
    env.update(jax_env, FAKE_JAX_LOG=str(log), PYTHONPATH=os.pathsep.join([str(package.parent), str(repo)]))
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(DOCS), json.dumps(QUERIES), str(out)], cwd=repo, env=env,
                   check=True, timeout=300)
    return json.loads(out.read_text()), [json.loads(line) for line in log.read_text().splitlines()]


def expected_run() -> dict:
    """The same search in this process, where jax is not importable."""
    run = BM25([f"d{i}" for i in range(len(DOCS))], DOCS).search(QUERIES, k=3)
    return {q: [[d, s] for d, s in hits.items()] for q, hits in run.items()}


def split_log(log: list[dict]) -> tuple[list[dict], list[dict]]:
    """The stand-in's log before and after the child's search began."""
    start = [e["event"] for e in log].index("search")
    return log[:start], log[start + 1:]


def test_jax_kept_on_cpu_and_never_asked_for_top_k(tmp_path):
    result, log = search_with_stand_in_jax(tmp_path)
    assert result["stand_in"] and result["jax_available"]  # bm25s did import the stand-in and would use it on "auto"
    before, during = split_log(log)
    assert before[0] == {"event": "import", "JAX_PLATFORMS": "cpu", "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    assert [e["event"] for e in before].count("import") == 1
    # bm25s 0.3.16 runs one dummy top_k when it is imported: on the CPU platform, set before jax was imported.
    assert all(e["JAX_PLATFORMS"] == "cpu" for e in before)
    assert during == []  # the search never asked jax for anything
    assert result["run"] == expected_run()
    assert any(result["run"].values()) and result["run"]["q3"] == []


def test_users_own_jax_settings_are_kept(tmp_path):
    result, log = search_with_stand_in_jax(tmp_path, JAX_PLATFORMS="cuda", XLA_PYTHON_CLIENT_PREALLOCATE="true")
    assert result["stand_in"] and result["jax_available"]
    before, during = split_log(log)
    assert before[0] == {"event": "import", "JAX_PLATFORMS": "cuda", "XLA_PYTHON_CLIENT_PREALLOCATE": "true"}
    assert during == []  # the user's JAX may use the GPU, but BM25's top-k is numpy's all the same
    assert result["run"] == expected_run()
