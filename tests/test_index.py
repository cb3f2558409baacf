"""Dense (faiss, torch) and sparse (scipy) search against brute-force products; pruning; the embedding cache."""

import json
import shutil

import numpy as np
import pytest
import scipy.sparse as sp

from hyper_retrieval.core.atomic_files import file_digest
from hyper_retrieval.core.fingerprints import path_fingerprint
from hyper_retrieval.search.cache import _save_entry, cached_entry, check_shard_vectors, entry_folder
from hyper_retrieval.search.index import DenseIndex, SparseIndex, prune_query_terms, run_from_topk


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((3000, 48)).astype(np.float32)
    queries = rng.standard_normal((64, 48)).astype(np.float32)
    return docs, queries


def brute_force(docs, queries, k):
    scores = queries.astype(np.float64) @ docs.T.astype(np.float64)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, axis=1), top


def test_exact_faiss_equals_numpy(vectors):
    docs, queries = vectors
    scores, indices = DenseIndex(docs, backend="faiss").search(queries, 20, batch_size=16)
    expected_scores, expected = brute_force(docs, queries, 20)
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-4)


def test_torch_backend_equals_faiss(vectors):
    docs, queries = vectors
    faiss_scores, faiss_idx = DenseIndex(docs, backend="faiss").search(queries, 20)
    torch_scores, torch_idx = DenseIndex(docs, backend="torch").search(queries, 20, batch_size=10)
    np.testing.assert_array_equal(torch_idx, faiss_idx)
    np.testing.assert_allclose(torch_scores, faiss_scores, rtol=1e-4, atol=1e-4)


def test_k_larger_than_corpus(vectors):
    docs, queries = vectors
    scores, indices = DenseIndex(docs[:5]).search(queries[:3], 10)
    assert indices.shape == (3, 5) and sorted(indices[0]) == list(range(5))


@pytest.mark.parametrize("kind, minimum", [("ivf", 0.5), ("hnsw", 0.8), ("hnsw-sq8", 0.8)])
def test_approximate_indexes_report_recall(vectors, kind, minimum):
    docs, queries = vectors
    index = DenseIndex(docs, kind=kind, nlist=16, nprobe=4)
    recall = index.recall_against_exact(queries, 10)
    _, exact = brute_force(docs, queries, 10)
    _, approx = index.search(queries, 10)
    direct = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall == pytest.approx(direct)
    assert minimum <= recall <= 1.0
    assert DenseIndex(docs).recall_against_exact(queries, 10) == 1.0


def random_sparse(rows, vocab, density, seed):
    return sp.random(rows, vocab, density=density, format="csr", random_state=seed, dtype=np.float32,
                     data_rvs=np.random.default_rng(seed).random)


def test_sparse_index_equals_dense_product():
    docs, queries = random_sparse(800, 500, 0.02, 1), random_sparse(40, 500, 0.05, 2)
    scores, indices = SparseIndex(docs).search(queries, 15, batch_size=7)
    product = (queries @ docs.T).toarray()
    for q in range(40):
        matching = np.flatnonzero(product[q] > 0)
        expected = matching[np.lexsort((matching, -product[q, matching]))][:15]
        found = indices[q][indices[q] >= 0]
        np.testing.assert_array_equal(found, expected)
        np.testing.assert_allclose(scores[q, : len(found)], product[q, expected], rtol=1e-5)
        assert np.all(np.isneginf(scores[q, len(found):]))


def test_pruning_keeps_exactly_the_top_k_terms():
    queries = random_sparse(30, 400, 0.1, 3)
    pruned = prune_query_terms(queries, 5)
    for q in range(30):
        row = queries[q].toarray().ravel()
        kept = np.flatnonzero(pruned[q].toarray().ravel())
        assert len(kept) == min(5, np.count_nonzero(row))
        np.testing.assert_array_equal(np.sort(kept), np.sort(np.argsort(-row, kind="stable")[: len(kept)]))
        np.testing.assert_array_equal(pruned[q].toarray().ravel()[kept], row[kept])
    docs = random_sparse(300, 400, 0.05, 4)
    index = SparseIndex(docs)
    np.testing.assert_array_equal(index.search(queries, 10, prune_terms=5)[1], index.search(pruned, 10)[1])


def test_run_from_topk_drops_empty_slots():
    run = run_from_topk(["q1", "q2"], ["a", "b", "c"], np.array([[3.0, 1.0], [2.0, -np.inf]]),
                        np.array([[2, 0], [1, -1]]))
    assert run == {"q1": {"c": 3.0, "a": 1.0}, "q2": {"b": 2.0}}


def cached_embeddings(cache_dir, parts, compute):
    """One array cached as a "vectors" entry, as the corpus encoder caches a shard's vectors."""
    arrays, hit = cached_entry(cache_dir, "vectors", parts, lambda: {"vectors": compute()})
    return arrays["vectors"], hit


def test_embedding_cache_reuses_until_key_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.arange(12, dtype=np.float32).reshape(4, 3)

    parts = {"model": "m1", "corpus": "c1", "max_length": 128}
    first, hit1 = cached_embeddings(tmp_path, parts, compute)
    second, hit2 = cached_embeddings(tmp_path, dict(parts), compute)
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert isinstance(second, np.memmap)
    np.testing.assert_array_equal(second, compute())
    _, hit3 = cached_embeddings(tmp_path, {**parts, "max_length": 256}, compute)
    assert not hit3 and len(calls) == 3
    sparse, hit = cached_embeddings(tmp_path, {**parts, "model": "splade"}, lambda: sp.csr_matrix(np.eye(3)))
    assert not hit and sp.issparse(sparse)
    again, hit = cached_embeddings(tmp_path, {**parts, "model": "splade"}, compute)
    assert hit and sp.issparse(again) and (again != sp.csr_matrix(np.eye(3))).nnz == 0


def test_model_fingerprint_follows_weights(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"0" * 10)
    before = path_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"0" * 11)
    assert path_fingerprint(tmp_path) != before
    assert path_fingerprint("org/some-hub-model") == "org/some-hub-model"
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path, copy, ignore=shutil.ignore_patterns("copy"))
    assert path_fingerprint(copy) == path_fingerprint(tmp_path)  # by content, not by place or time


@pytest.mark.parametrize("damage", ["truncate", "shuffle", "manifest", "shape"])
def test_a_damaged_cache_entry_is_reported_and_computed_again(tmp_path, damage, caplog):
    vectors = np.arange(40, dtype=np.float32).reshape(10, 4)
    calls = []

    def compute():
        calls.append(1)
        return vectors

    cached_embeddings(tmp_path, {"corpus": "c"}, compute)
    (entry,) = tmp_path.glob("*.vectors")
    path = entry / "vectors.npy"
    if damage == "truncate":  # half its rows
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "shuffle":  # same size, rows in another order
        np.save(path, vectors[::-1].copy())
    elif damage == "manifest":  # an entry whose manifest was never written
        (entry / "manifest.json").unlink()
    else:  # a consistent file of another shape
        np.save(path, vectors[:5])
        manifest = json.loads((entry / "manifest.json").read_text())
        manifest["files"]["vectors.npy"] |= {"bytes": path.stat().st_size, "sha256": file_digest(path)}
        (entry / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        again, hit = cached_embeddings(tmp_path, {"corpus": "c"}, compute)
    assert not hit and len(calls) == 2 and str(entry) in caplog.text
    np.testing.assert_array_equal(again, vectors)
    assert cached_embeddings(tmp_path, {"corpus": "c"}, compute)[1]  # the recomputed entry is good again


def shard_entry(cache_dir, compute):
    """A 200-document shard's vectors cached with the corpus encoder's check (one row per document, in order)."""
    return cached_entry(cache_dir, "vectors", {"corpus": "c", "rows": [0, 200]}, compute, check_shard_vectors(0, 200))


def good_shard():
    return {"vectors": np.random.default_rng(1).standard_normal((200, 8)).astype(np.float32),
            "docs": np.arange(200)}


@pytest.mark.parametrize("forgery", ["fewer rows", "empty manifest", "plain file", "object array"])
def test_a_forged_or_malformed_entry_is_computed_again_not_trusted(tmp_path, forgery, caplog):
    folder = entry_folder(tmp_path, "vectors", {"corpus": "c", "rows": [0, 200]})
    if forgery == "fewer rows":  # consistent checksums, 150 vectors for the shard's 200 documents
        _save_entry(folder, {"corpus": "c", "rows": [0, 200]}, {"vectors": good_shard()["vectors"][:150],
                                                                "docs": np.arange(150)})
    elif forgery == "empty manifest":
        _save_entry(folder, {"corpus": "c", "rows": [0, 200]}, good_shard())
        (folder / "manifest.json").write_text(json.dumps({"key": {"corpus": "c", "rows": [0, 200]}, "files": {}}))
    elif forgery == "plain file":
        folder.write_text("not an entry")
    else:  # an object array under a manifest that agrees with it: reading it would need a pickle
        _save_entry(folder, {"corpus": "c", "rows": [0, 200]}, good_shard())
        np.save(folder / "vectors.npy", np.array([{"a": 1}] * 200, dtype=object), allow_pickle=True)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["files"]["vectors.npy"] = {"bytes": (folder / "vectors.npy").stat().st_size, "shape": [200],
                                            "sha256": file_digest(folder / "vectors.npy"), "dtype": "object"}
        (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level("WARNING"):
        arrays, hit = shard_entry(tmp_path, good_shard)
    assert not hit and str(folder) in caplog.text
    np.testing.assert_array_equal(arrays["vectors"], good_shard()["vectors"])
    assert shard_entry(tmp_path, good_shard)[1]  # and the recomputed entry is used from then on


CONCURRENT_WRITER = """
import sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
from hyper_retrieval.search.cache import cached_entry

def compute():
    time.sleep(1.0)  # both processes are computing the same entry at once
    return {"vectors": np.random.default_rng(7).standard_normal((500, 16)).astype(np.float32)}

arrays, hit = cached_entry(sys.argv[1], "vectors", {"corpus": "shared"}, compute)
np.save(sys.argv[3], np.asarray(arrays["vectors"]))
"""


def test_two_processes_filling_one_cache_entry_both_finish_with_identical_vectors(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = str(Path(__file__).resolve().parents[1])
    writers = [subprocess.Popen([sys.executable, "-c", CONCURRENT_WRITER, str(tmp_path / "cache"), repo,
                                 str(tmp_path / f"out{i}.npy")], stderr=subprocess.PIPE, text=True) for i in range(2)]
    for writer in writers:
        assert writer.wait(timeout=120) == 0, writer.stderr.read()
    first, second = np.load(tmp_path / "out0.npy"), np.load(tmp_path / "out1.npy")
    np.testing.assert_array_equal(first, second)
    assert len(list((tmp_path / "cache").glob("*.vectors"))) == 1
    assert not list((tmp_path / "cache").glob(".*"))  # no temporary folder left behind


def test_temporary_folders_of_killed_runs_are_swept_and_live_ones_kept(tmp_path):
    import os
    import time

    stale, live = tmp_path / ".abc.vectors.999999.tmp", tmp_path / ".def.vectors.999998.tmp"
    for folder in (stale, live):
        folder.mkdir()
        (folder / "vectors.npy").write_bytes(b"half written")
    long_ago = time.time() - 3600  # before this process started
    os.utime(stale, (long_ago, long_ago))
    cached_embeddings(tmp_path, {"corpus": "c"}, lambda: np.ones((3, 2), dtype=np.float32))
    assert not stale.exists() and live.exists()
