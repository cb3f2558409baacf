"""Long passages read in windows (MaxP): the windows, the document-level search over them, training on them."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sample_collection import sample_of
from tiny import tiny_model
from transformers import AutoTokenizer

from hyper_retrieval.data.beir import Corpus, load_collection
from hyper_retrieval.search.corpus_encoder import CorpusEncoder, PassageWindows
from hyper_retrieval.search.index import DenseIndex, SparseIndex, top_documents
from hyper_retrieval.search.searchers import ModelSearcher
from hyper_retrieval.training.losses import contrastive_loss
from hyper_retrieval.training.passage_table import PassageTable

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def with_tokenizer(minilm_path, **config):
    """A tiny random model (no prompt unless asked) that reads text with MiniLM's tokenizer."""
    model = tiny_model(**{"pool_size": None, **config})
    model.tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return model


@pytest.fixture(scope="module")
def long_passage(bbir) -> dict:
    """A real quoref passage of several hundred tokens."""
    docs = [json.loads(line) for line in (bbir / "quoref" / "corpus.jsonl").read_text().splitlines()[:20]]
    return {"title": "A repeated title", "text": max((d["text"] for d in docs), key=len)}


def test_windows_cover_every_token_with_the_strides_overlap(minilm_path, long_passage):
    model = with_tokenizer(minilm_path)
    tokenizer = model.tokenizer
    short = {"title": "", "text": "a short passage"}
    ids, offsets, docs = model.tokenize_windows([long_passage, short], window_length=32, stride=10)
    windows = [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(len(docs))]
    title = tokenizer(long_passage["title"], add_special_tokens=False)["input_ids"]
    body = tokenizer(long_passage["text"], add_special_tokens=False)["input_ids"]
    room = 32 - 2 - len(title)  # [CLS] title text-slice [SEP]
    assert len(body) > 300 and docs.tolist() == [0] * (len(windows) - 1) + [1]
    long_windows = windows[:-1]
    assert len(long_windows) == 1 + -(-(len(body) - room) // 10)
    covered = set()
    for j, window in enumerate(long_windows):
        assert len(window) <= 32
        assert window[0] == tokenizer.cls_token_id and window[-1] == tokenizer.sep_token_id
        assert window[1:1 + len(title)] == title  # the title in every window
        assert window[1 + len(title):-1] == body[j * 10:j * 10 + room]  # starts 10 apart: room - 10 shared
        covered |= set(range(j * 10, min(j * 10 + room, len(body))))
    assert covered == set(range(len(body)))
    assert windows[-1] == tokenizer(short["text"])["input_ids"]  # a short passage is one window


def test_first_windows_are_the_truncation_tokenize_does(minilm_path, bbir):
    model = with_tokenizer(minilm_path, max_seq_length=64)
    docs = [json.loads(line) for line in (bbir / "drop" / "corpus.jsonl").read_text().splitlines()[:50]]
    ids, offsets, window_doc = model.tokenize_windows(docs, first_only=True)
    expected_ids, expected_offsets = model.tokenize(model.passage_texts(docs))
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(offsets, expected_offsets)
    np.testing.assert_array_equal(window_doc, np.arange(50))


def test_window_length_above_the_backbone_limit_is_an_error(minilm_path):
    model = with_tokenizer(minilm_path)  # the tiny BERT has 128 positions
    assert model.max_window_length() == 128
    with pytest.raises(ValueError, match="window_length=129 exceeds the backbone's limit of 128"):
        model.tokenize_windows(["text"], window_length=129)
    with pytest.raises(ValueError, match="max_length=600 .* exceeds the backbone's limit of 128"):
        CorpusEncoder(model, "tiny", max_length=600, windows=PassageWindows("max"))
    with pytest.raises(ValueError, match="stride=40: expected 1..30"):
        model.tokenize_windows(["text"], window_length=32, stride=40)


def brute_force_top_documents(window_scores: np.ndarray, window_doc: np.ndarray, k: int):
    """Every document's best window, then the k best documents (a dense (n_queries, n_docs) scan)."""
    starts = np.searchsorted(window_doc, np.arange(window_doc[-1] + 1))
    doc_scores = np.maximum.reduceat(window_scores, starts, axis=1)
    order = np.argsort(-doc_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(doc_scores, order, axis=1), order


@pytest.mark.parametrize("k", [1, 7, 40])
def test_document_search_is_exact_and_never_repeats_a_document(k):
    rng = np.random.default_rng(k)
    window_doc = np.repeat(np.arange(40), rng.integers(1, 7, size=40))  # 40 documents of 1-6 windows
    vectors = rng.normal(size=(len(window_doc), 16)).astype(np.float32)
    queries = rng.normal(size=(25, 16)).astype(np.float32)
    scores, indices = top_documents(DenseIndex(vectors).search, queries, k, window_doc)
    expected_scores, expected_indices = brute_force_top_documents(queries @ vectors.T, window_doc, k)
    np.testing.assert_array_equal(indices, expected_indices)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)
    assert all(len(set(row)) == len(row) for row in indices.tolist())


def test_sparse_document_search_keeps_only_matching_documents():
    rng = np.random.default_rng(0)
    window_doc = np.repeat(np.arange(30), rng.integers(1, 5, size=30))
    vectors = sp.random(len(window_doc), 50, density=0.05, random_state=1, format="csr", dtype=np.float32)
    queries = sp.random(10, 50, density=0.1, random_state=2, format="csr", dtype=np.float32)
    scores, indices = top_documents(lambda q, m: SparseIndex(vectors).search(q, m), queries, 5, window_doc)
    dense = (queries @ vectors.T).toarray()
    expected_scores, expected_indices = brute_force_top_documents(dense, window_doc, 5)
    for row in range(10):
        matching = expected_scores[row] > 0  # documents sharing no term with the query are never returned
        assert indices[row][indices[row] >= 0].tolist() == expected_indices[row][matching].tolist()
        np.testing.assert_allclose(scores[row][: matching.sum()], expected_scores[row][matching], rtol=1e-5)


@pytest.fixture(scope="module")
def long_sample(bbir, tmp_path_factory) -> Path:
    return sample_of(bbir / "multirc", tmp_path_factory.mktemp("windows") / "multirc", 30)


def test_maxp_search_equals_a_brute_force_max_over_window_vectors(minilm_path, long_sample, tmp_path):
    model = with_tokenizer(minilm_path, max_seq_length=48, normalize=True)
    collection = load_collection(long_sample, "test")
    searcher = ModelSearcher(CorpusEncoder(model, "tiny", batch_size=16, cache_dir=tmp_path, show_progress=False,
                                           windows=PassageWindows("max", stride=20)))
    found = searcher.search(collection.corpus, collection.queries, 10)
    run, info = found.run, found.info
    assert info["windows_per_doc"] > 3 and not info["corpus_cache_hit"]

    ids, offsets, window_doc = model.tokenize_windows(collection.corpus.get_many(collection.corpus.ids), 48, 20)
    window_vectors = model.encode_tokenized(ids, offsets)[0]
    queries = model.encode_queries(list(collection.queries.values()))
    scores, indices = brute_force_top_documents(queries @ window_vectors.T, window_doc, 10)
    for row, qid in enumerate(collection.queries):
        assert list(run[qid]) == [collection.corpus.ids[j] for j in indices[row]]
        np.testing.assert_allclose(list(run[qid].values()), scores[row], rtol=1e-4, atol=1e-6)
    found = searcher.search(collection.corpus, collection.queries, 10)
    again, info = found.run, found.info
    assert info["corpus_cache_hit"] and again == run


def test_the_window_length_reads_passages_and_leaves_the_model_as_it_was(minilm_path, long_sample):
    """--max-length is the passage window: the encoder reads passages so, never edits the model's config, and the
    searcher reads queries at the model's own query length."""
    model = with_tokenizer(minilm_path, max_seq_length=48, max_query_length=12)
    collection = load_collection(long_sample, "test")
    config_before = model.config.to_dict()
    encoder = CorpusEncoder(model, "tiny", max_length=24, show_progress=False)
    store, _ = encoder.encode(collection.corpus)
    assert model.config.to_dict() == config_before
    ids, offsets, _ = model.tokenize_windows(collection.corpus.get_many(collection.corpus.ids), 24, first_only=True)
    assert np.diff(offsets).max() == 24
    np.testing.assert_allclose(store.load(), model.encode_tokenized(ids, offsets)[0], atol=1e-6)
    queries = [q * 5 for q in list(collection.queries.values())[:4]]  # longer than 24 tokens
    assert min(len(model.tokenizer(q)["input_ids"]) for q in queries) > 24
    q_ids, q_offsets = model.tokenize(queries, 12)
    np.testing.assert_allclose(ModelSearcher(encoder).queries.encode(queries, None)[0],
                               model.encode_tokenized(q_ids, q_offsets, is_query=True)[0], atol=1e-6)


def test_passage_table_gives_every_window_and_training_scores_the_best(minilm_path, long_sample, tmp_path):
    model = with_tokenizer(minilm_path, max_seq_length=48, share_encoders=False, freeze_passage_encoder=True)
    corpus = Corpus.from_jsonl(long_sample / "corpus.jsonl")
    short = Corpus.from_jsonl(SAMPLE / "qasc" / "corpus.jsonl")
    table = PassageTable.encode(model, {"multirc": corpus, "qasc": short}, tmp_path, show_progress=False,
                                windows=PassageWindows("max", stride=20))
    keys = [f"multirc/{corpus.ids[3]}", f"qasc/{short.ids[0]}", f"multirc/{corpus.ids[0]}"]
    vectors, mask = table.lookup(keys)
    assert vectors.shape[:2] == mask.shape == (3, table.max_windows)
    ids, offsets, window_doc = model.tokenize_windows(corpus.get_many([corpus.ids[3]]), 48, 20)
    expected = model.encode_tokenized(ids, offsets)[0]
    assert mask[0].sum() == len(expected) > 1 and mask[1].sum() == 1  # a short passage: one window
    np.testing.assert_allclose(vectors[0, : len(expected)].numpy(), expected, atol=1e-5)

    queries = torch.randn(2, vectors.shape[-1])
    targets = torch.tensor([0, 2])
    best = torch.stack([(queries @ vectors[i, mask[i]].T).amax(-1) for i in range(3)], dim=1)  # (2, 3)
    expected_loss = torch.nn.functional.cross_entropy(best / 0.1, targets)
    assert contrastive_loss(queries, vectors, targets, 0.1, window_mask=mask).item() == pytest.approx(
        expected_loss.item(), rel=1e-5)


@pytest.mark.parametrize("representation", ["dense", "sparse"])
def test_score_passages_takes_each_passages_best_window(minilm_path, long_passage, representation):
    model = with_tokenizer(minilm_path, max_seq_length=32, representation=representation)
    passages = [long_passage, "a short passage"]
    query = "who is the story about"
    first = model.score_passages(query, passages, windows="first")
    expected_first = model.encode_corpus(passages) @ model.encode_queries([query]).T
    expected_first = expected_first.toarray() if sp.issparse(expected_first) else expected_first
    np.testing.assert_allclose(first, expected_first.reshape(-1), rtol=1e-5, atol=1e-6)
    ids, offsets, window_doc = model.tokenize_windows(passages)
    window_scores = model.encode_tokenized(ids, offsets)[0] @ model.encode_queries([query]).T
    window_scores = (window_scores.toarray() if sp.issparse(window_scores) else window_scores).reshape(-1)
    best = model.score_passages(query, passages)
    np.testing.assert_allclose(best, [window_scores[window_doc == d].max() for d in (0, 1)], rtol=1e-5, atol=1e-6)
    assert best[0] >= first[0] and best[1] == pytest.approx(first[1], abs=1e-6)


def test_a_pooled_corpus_keeps_each_documents_windows_together(minilm_path, long_sample, bbir, tmp_path):
    from hyper_retrieval.data.beir import pooled_collection

    model = with_tokenizer(minilm_path, max_seq_length=48)
    collections = [load_collection(long_sample, "test"), load_collection(sample_of(
        bbir / "ropes", tmp_path / "ropes", 20), "test")]
    encoder = CorpusEncoder(model, "tiny", cache_dir=tmp_path / "cache", show_progress=False,
                            windows=PassageWindows("max", stride=24))
    separate = [encoder.encode(c.corpus)[0] for c in collections]
    pool = pooled_collection(collections)
    pooled, hit = encoder.encode(pool.corpus)
    assert hit  # the pool reuses the per-collection window vectors
    np.testing.assert_array_equal(pooled.doc, np.concatenate([separate[0].doc, separate[1].doc + 30]))
    searcher = ModelSearcher(encoder)
    run = searcher.search(pool.corpus, pool.queries, 10).run
    for qid, text in list(collections[1].queries.items())[:3]:  # a ropes query over both corpora
        alone = searcher.search(collections[1].corpus, {qid: text}, 10).run
        ropes_hits = {d.split("/", 1)[1]: s for d, s in run[f"ropes/{qid}"].items() if d.startswith("ropes/")}
        assert list(ropes_hits) == list(alone[qid])[: len(ropes_hits)]
