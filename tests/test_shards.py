"""Past one machine: sharded corpus encoding over processes, the shard store's bounded reads, compressed indexes."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest
import scipy.sparse as sp

from hyper_retrieval.data.beir import Corpus
from hyper_retrieval.search.cache import _save_entry
from hyper_retrieval.search.index import DenseIndex, SparseIndex, exact_search, topk_overlap
from hyper_retrieval.search.shards import Shard, ShardStore, shard_ranges
from tests.processes import REPO, torchrun_two
from tests.sample_collection import sample_of

SHARD_DOCS = 8


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 20) -> np.ndarray:
    """Unit vectors around random centres, shaped like a corpus's embeddings (not isotropic noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def disk_store(vectors: np.ndarray, folder, shard_rows: int) -> ShardStore:
    """``vectors`` cut into cache entries of ``shard_rows`` rows, as the encoder writes them."""
    shards = []
    for i, (start, end) in enumerate(shard_ranges(len(vectors), shard_rows)):
        entry = folder / f"shard-{i:05d}.vectors"
        _save_entry(entry, {"shard": i}, {"vectors": vectors[start:end], "docs": np.arange(start, end)})
        shards.append(Shard(entry, np.arange(start, end)))
    return ShardStore(shards)


def encode_run(model, corpus, cache, processes: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
           str(REPO / "encode.py"), "--model", str(model), "--corpus", str(corpus), "--cache-dir", str(cache),
           "--shard-docs", str(SHARD_DOCS), "--no-progress", "--dtype", "float32", *extra]  # as the in-process encoder
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def finished_shards(cache) -> dict[str, float]:
    """Finished shard entries (their manifest is written last) -> the manifest's modification time."""
    return {m.parent.name: m.stat().st_mtime_ns for m in cache.glob("*.vectors/manifest.json")}


def test_two_processes_encode_what_one_does_and_a_killed_run_resumes(minilm_path, bbir, tmp_path):
    from hyper_retrieval.search.corpus_encoder import CorpusEncoder
    from modeling_hyper import HyperRetrieverModel

    collection = sample_of(bbir / "ropes", tmp_path / "ropes", 120)
    model = HyperRetrieverModel.from_backbone(minilm_path)
    model.save_pretrained(tmp_path / "model")
    corpus = Corpus.from_jsonl(collection / "corpus.jsonl")
    n_shards = len(shard_ranges(len(corpus), SHARD_DOCS))
    cache = tmp_path / "cache"

    run = encode_run(tmp_path / "model", collection, cache, 2)  # killed once its first shards are in
    deadline = time.monotonic() + 240
    while not finished_shards(cache) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    for process in [*psutil.Process(run.pid).children(recursive=True), psutil.Process(run.pid)]:
        process.kill()  # the launcher and its workers, as an out-of-memory kill or a lost node would
    run.wait()
    before = finished_shards(cache)
    assert 0 < len(before) < n_shards, f"the run was to be killed mid-way: {len(before)} of {n_shards} shards"

    resumed = encode_run(tmp_path / "model", collection, cache, 2)
    output = resumed.communicate(timeout=300)[0]
    assert resumed.returncode == 0, output[-3000:]
    reused = sum(int(line.split(" shards, ")[1].split()[0]) for line in output.splitlines()
                 if line.startswith("process "))
    assert reused == len(before)  # what the killed run finished is not encoded again ...
    after = finished_shards(cache)
    assert len(after) == n_shards and all(after[name] == mtime for name, mtime in before.items())  # ... nor rewritten

    shards_of_run = CorpusEncoder(model, _fingerprint(model), cache_dir=cache, show_progress=False,
                                  shard_docs=SHARD_DOCS).encode(corpus)
    assert shards_of_run[1]  # the processes' shards, all found
    one_process = CorpusEncoder(model, "one", cache_dir=None, show_progress=False).encode(corpus)[0]
    assert len(one_process.shards) == 1
    np.testing.assert_allclose(shards_of_run[0].load(), one_process.load(), atol=2e-5)
    np.testing.assert_array_equal(shards_of_run[0].doc, np.arange(len(corpus)))


def _fingerprint(model) -> str:
    from hyper_retrieval.core.fingerprints import passage_encoder_fingerprint

    return passage_encoder_fingerprint(model)


def test_the_store_reads_one_shard_at_a_time(tmp_path):
    """200 shards, 150 MB on disk: searching them all and reading them through grows the process by a few MB."""
    vectors = clustered(100_000, 384, seed=1)
    disk_store(vectors, tmp_path / "store", 500)
    queries = clustered(50, 384, seed=2)
    exact = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    np.save(tmp_path / "queries.npy", queries)
    script = f"""
import json, resource, sys
from pathlib import Path
import numpy as np
from hyper_retrieval.search.index import DenseIndex
from hyper_retrieval.search.shards import Shard, ShardStore
folder = Path({str(tmp_path / "store")!r})
entries = sorted(folder.glob("*.vectors"))
store = ShardStore([Shard(e, np.load(e / "docs.npy")) for e in entries])
queries = np.load(Path({str(tmp_path / "queries.npy")!r}))
DenseIndex(ShardStore(store.shards[:1]), chunk_rows=4096).search(queries, 10)  # warm-up on one shard
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
total = sum(float(block.sum()) for _, block in store.chunks(4096))
_, found = DenseIndex(store, chunk_rows=4096).search(queries, 10)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"grew_kb": after - before, "total": total, "found": found.tolist(), "shards": len(entries)}}))
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    assert facts["shards"] == 200
    np.testing.assert_array_equal(facts["found"], exact)
    assert facts["total"] == pytest.approx(float(vectors.sum(dtype=np.float64)), rel=1e-4)
    assert facts["grew_kb"] < 30_000, f"reading the store grew the process by {facts['grew_kb']} kB of 150,000"


def test_store_rows_gather_across_shards_and_a_pool_shifts_documents(tmp_path):
    vectors = clustered(50, 8)
    store = disk_store(vectors, tmp_path, 7)
    rows = np.array([[49, 0, 13], [7, 6, 7]])
    np.testing.assert_array_equal(store.take(rows), vectors[rows])
    np.testing.assert_array_equal(store.load(), vectors)
    np.testing.assert_array_equal(np.concatenate([b for _, b in store.chunks(3)]), vectors)
    assert [s for s, _ in store.chunks(5)][:3] == [0, 5, 7]  # chunks never straddle shards
    queries = clustered(3, 8, seed=5)  # exact search over shards of 7 rows for a top 20 that spans several
    expected = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :20]
    np.testing.assert_array_equal(exact_search(store, queries, 20, chunk_rows=4)[1], expected)
    pool = ShardStore.concatenate([store, ShardStore.from_array(vectors[:4])], [50, 4])
    np.testing.assert_array_equal(pool.doc, np.concatenate([np.arange(50), 50 + np.arange(4)]))
    np.testing.assert_array_equal(pool.take(np.array([52])), vectors[[2]])


def test_recall_against_exact_search_on_a_hand_made_case():
    exact = np.array([[0, 1, 3], [5, 6, 7]])
    approx = np.array([[1, 0, 2], [5, -1, -1]])  # 2 of 3, then 1 of 3 (empty slots are misses)
    assert topk_overlap(approx, exact) == pytest.approx(0.5)
    # Two groups of 60 documents; an IVF index with one cell per group that probes one cell finds one group only.
    docs = np.array([[1, 0], [0.9, 0.1], [0.95, 0.05], [0, 1], [0.1, 0.9], [0.05, 0.95]] * 20, dtype=np.float32)
    first_group = np.flatnonzero(docs[:, 0] > docs[:, 1])
    query = np.array([[0.72, 0.7]], dtype=np.float32)  # a little closer to the first group
    index = DenseIndex(docs, kind="ivf", nlist=2, nprobe=1)
    found = index.search(query, 90)[1][0]
    assert set(found[found >= 0]) == set(first_group)  # the whole first group, nothing of the second
    truth = exact_search(ShardStore.from_array(docs), query, 90)[1][0]
    assert set(first_group) < set(truth)  # the exact top 90: the first group and 30 of the second
    assert index.recall_against_exact(query, 90) == pytest.approx(60 / 90)


@pytest.mark.parametrize(("kind", "n", "dim", "pq_m"), [  # dim / 4 code bytes each; OPQ trains slowly
    ("ivfpq", 4000, 32, 8), ("ivfpq-fs", 4000, 32, 16), ("opq", 2000, 16, 4)])
def test_a_saved_compressed_index_reopens_memory_mapped_with_the_same_results(kind, n, dim, pq_m, tmp_path):
    import faiss

    vectors = clustered(n, dim, seed=3)
    store = disk_store(vectors, tmp_path / "store", 1000)
    queries = clustered(40, dim, seed=4)
    index = DenseIndex(store, kind=kind, nlist=32, nprobe=8, pq_m=pq_m, refine_factor=4, chunk_rows=700)
    scores, found = index.search(queries, 20)
    index.save(tmp_path / "index.faiss")
    reopened = DenseIndex.load(tmp_path / "index.faiss", store, mmap=True)
    invlists = faiss.extract_index_ivf(reopened._faiss).invlists
    assert not isinstance(faiss.downcast_InvertedLists(invlists), faiss.ArrayInvertedLists)  # mapped, not read in
    again_scores, again = reopened.search(queries, 20)
    np.testing.assert_array_equal(again, found)
    np.testing.assert_allclose(again_scores, scores, rtol=1e-6)
    exact_scores = np.take_along_axis(queries @ vectors.T, found, 1)
    np.testing.assert_allclose(scores, exact_scores, rtol=1e-5, atol=1e-6)  # refined: exact inner products
    assert (found >= 0).all()
    assert index.bytes_per_vector() < 4 * dim * 3 / 4  # dim / 4 code bytes + 8-byte ids against 4 dim of floats
    assert index.recall_against_exact(queries, 20) > 0.8


def test_a_saved_index_that_does_not_match_its_store_or_model_is_refused(tmp_path):
    vectors = clustered(2000, 32)
    DenseIndex(vectors, kind="ivfpq", pq_m=8).save(tmp_path / "index.faiss", model="passage-encoder:aaa")
    DenseIndex.load(tmp_path / "index.faiss", vectors, model="passage-encoder:aaa")  # the right ones load
    with pytest.raises(ValueError, match="built on 2000 vectors of 32 dimensions; the store given has 1999 of 32"):
        DenseIndex.load(tmp_path / "index.faiss", vectors[:-1])
    with pytest.raises(ValueError, match="the store given has 2000 of 16"):
        DenseIndex.load(tmp_path / "index.faiss", clustered(2000, 16))
    other = clustered(2000, 32, seed=9)  # another model's vectors of the same corpus: same count and dimension
    with pytest.raises(ValueError, match=r"built on the store store:\w+, the store given is store:\w+"):
        DenseIndex.load(tmp_path / "index.faiss", other)
    with pytest.raises(ValueError, match="passage encoder passage-encoder:aaa, the model given is passage-encoder:bbb"):
        DenseIndex.load(tmp_path / "index.faiss", vectors, model="passage-encoder:bbb")
    (tmp_path / "index.faiss").write_bytes(b"not an index")
    with pytest.raises(ValueError, match="index.faiss: does not match the checksum in index.faiss.json"):
        DenseIndex.load(tmp_path / "index.faiss")
    (tmp_path / "index.faiss.json").write_text('{"kind": "ivfpq", "refine_factor": 1, "ntotal": 2000, "dim": 32}')
    with pytest.raises(ValueError, match="index.faiss.json: not the settings of a saved index.*build it again"):
        DenseIndex.load(tmp_path / "index.faiss")  # written before checksums: refused, with what to do


def test_every_single_byte_flip_of_a_saved_index_is_refused(tmp_path):
    vectors = clustered(2000, 32)
    DenseIndex(vectors, kind="ivfpq", pq_m=8).save(tmp_path / "index.faiss")
    original = (tmp_path / "index.faiss").read_bytes()
    for position in np.random.default_rng(0).choice(len(original), 60, replace=False):
        flipped = bytearray(original)
        flipped[position] ^= 0xFF
        (tmp_path / "index.faiss").write_bytes(bytes(flipped))
        with pytest.raises(ValueError, match="does not match the checksum"):
            DenseIndex.load(tmp_path / "index.faiss", vectors)


def test_saving_again_while_a_reader_has_the_index_mapped_leaves_the_reader_correct(tmp_path):
    vectors, queries = clustered(3000, 32), clustered(20, 32, seed=5)
    DenseIndex(vectors, kind="ivfpq", nlist=16, nprobe=16, pq_m=8).save(tmp_path / "index.faiss")
    reader = DenseIndex.load(tmp_path / "index.faiss", vectors, mmap=True)
    before = reader.search(queries, 10)
    DenseIndex(clustered(3000, 32, seed=7), kind="ivfpq", nlist=64, pq_m=16).save(tmp_path / "index.faiss")
    after = reader.search(queries, 10)  # the old file, still mapped, not the new bytes written over it
    np.testing.assert_array_equal(after[1], before[1])
    assert (after[1] >= 0).all() and (after[1] < 3000).all()


def test_sparse_posting_lists_built_per_shard_match_the_whole_corpus(tmp_path):
    docs = sp.random(300, 500, density=0.02, format="csr", random_state=1, dtype=np.float32)
    shards = []
    for start, end in shard_ranges(300, 70):
        shards.append(Shard(docs[start:end], np.arange(start, end)))
    queries = sp.random(20, 500, density=0.05, format="csr", random_state=2, dtype=np.float32)
    whole, sharded = SparseIndex(docs), SparseIndex(ShardStore(shards), chunk_rows=33)
    assert (whole.postings != sharded.postings).nnz == 0
    for a, b in zip(whole.search(queries, 10), sharded.search(queries, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_eval_on_two_processes_scores_what_one_process_does(minilm_path, bbir, tmp_path):
    """`torchrun eval.py`: each process encodes its MaxP shards, the main one searches; results as one process's."""
    from test_eval_cli import load_eval_module
    from tiny import tiny_model
    from transformers import AutoTokenizer

    model = tiny_model(pool_size=None, max_seq_length=48)
    model.tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model.save_pretrained(tmp_path / "model")
    collection = sample_of(bbir / "ropes", tmp_path / "ropes", 40)
    options = ["--model", str(tmp_path / "model"), "--data", str(collection), "--windows", "max", "--shard-docs", "9",
               "--no-progress"]
    torchrun_two(REPO / "eval.py", *options, "--cache-dir", str(tmp_path / "cache2"), "--out", str(tmp_path / "two"))
    load_eval_module().main([*options, "--cache-dir", str(tmp_path / "cache1"), "--out", str(tmp_path / "one")])
    assert len(list((tmp_path / "cache2").glob("*.vectors"))) == 5  # 40 documents in shards of 9
    one, two = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("one", "two"))
    assert two["collections"]["ropes"]["metrics"] == pytest.approx(one["collections"]["ropes"]["metrics"], abs=1e-6)
    runs = [(tmp_path / run / "runs" / "ropes.trec").read_text().splitlines() for run in ("one", "two")]
    assert [line.split()[:3] for line in runs[0]] == [line.split()[:3] for line in runs[1]]


def test_eval_reports_a_compressed_index_recall_memory_and_speed(minilm_path, bbir, tmp_path):
    from test_eval_cli import load_eval_module
    from tiny import tiny_model
    from transformers import AutoTokenizer

    model = tiny_model(pool_size=None, max_seq_length=48)
    model.tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    model.save_pretrained(tmp_path / "model")
    collection = sample_of(bbir / "ropes", tmp_path / "ropes", 400)
    common = ["--model", str(tmp_path / "model"), "--data", str(collection), "--no-progress", "--cache-dir",
              str(tmp_path / "cache")]
    eval_cli = load_eval_module()
    eval_cli.main([*common, "--index", "ivfpq", "--nlist", "8", "--nprobe", "8", "--pq-m", "8",
                   "--refine-factor", "4", "--out", str(tmp_path / "ivfpq")])
    eval_cli.main([*common, "--out", str(tmp_path / "flat")])
    ivfpq, flat = (json.loads((tmp_path / run / "results.json").read_text()) for run in ("ivfpq", "flat"))
    info = ivfpq["collections"]["ropes"]["info"]
    # every cell probed and every candidate re-scored exactly: exact search again, up to float rounding at place 100
    assert info["index_recall@100"] == pytest.approx(1.0, abs=1e-3)
    assert info["index_bytes_per_vector"] < flat["collections"]["ropes"]["info"]["index_bytes_per_vector"] == 4 * 32
    assert info["index_queries_per_s"] > 0 and ivfpq["settings"]["refine_factor"] == 4
    assert ivfpq["collections"]["ropes"]["metrics"] == pytest.approx(flat["collections"]["ropes"]["metrics"])


def test_a_saved_index_refuses_a_store_with_rows_changed_where_a_sample_would_not_look(tmp_path):
    """Five rows changed in the store's files, none of them among the 1,024 a sampled fingerprint read: the saved
    index is refused, both fingerprints named; an index saved with a sampled fingerprint is refused with what to do."""
    vectors = clustered(6000, 16)
    store = disk_store(vectors, tmp_path / "store", 2500)
    index = DenseIndex(store, kind="ivf", nlist=16, nprobe=16)
    index.save(tmp_path / "index.faiss")
    DenseIndex.load(tmp_path / "index.faiss", store)  # the same store loads
    sampled = set(np.linspace(0, len(vectors) - 1, 1024).astype(np.int64).tolist())  # what the old fingerprint read
    unsampled = sorted(set(range(len(vectors))) - sampled)
    changed = np.random.default_rng(1).choice(unsampled, 5, replace=False).tolist()
    for row in changed:  # written into the shard files in place, as an outside change would be
        shard = int(np.searchsorted(store.starts, row, side="right") - 1)
        mapped = np.load(store.shards[shard].source / "vectors.npy", mmap_mode="r+")
        mapped[row - store.starts[shard]] = -mapped[row - store.starts[shard]]
        mapped.flush()
        del mapped
    recorded = json.loads((tmp_path / "index.faiss.json").read_text())["store"]
    given = store.fingerprint()
    assert given != recorded
    with pytest.raises(ValueError, match=f"built on the store {recorded}, the store given is {given}"):
        DenseIndex.load(tmp_path / "index.faiss", store)
    # an index saved before every row was hashed (format 2: a sampled fingerprint) is never trusted with a store
    settings = json.loads((tmp_path / "index.faiss.json").read_text())
    (tmp_path / "index.faiss.json").write_text(json.dumps({**settings, "format": 2}))
    with pytest.raises(ValueError, match="format 2.*sample of 1,024 vectors.*build the index again"):
        DenseIndex.load(tmp_path / "index.faiss", store)
    DenseIndex.load(tmp_path / "index.faiss")  # without a store nothing is compared: it still opens


def test_the_store_fingerprint_sees_every_row_and_not_where_the_vectors_are_held(tmp_path):
    vectors = clustered(3000, 8)
    in_memory = ShardStore.from_array(vectors).fingerprint()
    assert disk_store(vectors, tmp_path / "a", 1000).fingerprint() == in_memory  # other shards, same vectors
    assert ShardStore.from_array(vectors).fingerprint(chunk_rows=7) == in_memory  # the blocks do not matter
    for row in (1, 1500, 2998):
        changed = vectors.copy()
        changed[row, 3] += 1e-3
        assert ShardStore.from_array(changed).fingerprint() != in_memory
    sparse = sp.random(500, 50, density=0.1, format="csr", random_state=0, dtype=np.float32)
    whole = ShardStore.from_array(sparse).fingerprint()
    assert ShardStore([Shard(sparse[:200], np.arange(200)), Shard(sparse[200:], np.arange(200, 500))]
                      ).fingerprint() == whole
    changed = sparse.copy()
    changed.data[-1] += 1
    assert ShardStore.from_array(changed).fingerprint() != whole
