"""eval.py end to end: BM25 through the command line, a real dense model in process, pooled mode, the config
file form, --compare, and the refusals (different results in --out, a model folder without weights)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from sample_collection import sample_of
from test_plots import png_size

from hyper_retrieval.data.beir import load_collection
from hyper_retrieval.evaluation.metrics import compute_metrics
from hyper_retrieval.evaluation.results import ResultsExistError, read_trec_run
from hyper_retrieval.search.bm25 import BM25

REPO = Path(__file__).resolve().parents[1]
METRIC_NAMES = ("ndcg@10", "r_precision", "recall@20", "recall@100", "mrr@10")


def load_eval_module():
    spec = importlib.util.spec_from_file_location("eval_cli", REPO / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def eval_cli():
    return load_eval_module()


@pytest.fixture(scope="module")
def samples(bbir, tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    return sample_of(bbir / "ropes", root / "ropes", 60), sample_of(bbir / "multirc", root / "multirc", 40)


def assert_metrics_equal(found, expected):
    assert {m: found[m] for m in METRIC_NAMES} == pytest.approx({m: expected[m] for m in METRIC_NAMES}, abs=1e-9)


def test_bm25_command_line_end_to_end(bbir, tmp_path):
    out = tmp_path / "bm25"
    subprocess.run([sys.executable, "eval.py", "--model", "bm25", "--data", str(bbir / "ropes"), "--zero-shot",
                    str(bbir / "multirc"), "--split", "test", "--out", str(out), "--no-progress"],
                   cwd=REPO, check=True, capture_output=True, text=True)
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["model"] == "bm25" and results["settings"]["zero_shot"] == ["multirc"]
    assert {n: c["zero_shot"] for n, c in results["collections"].items()} == {"ropes": False, "multirc": True}
    for name in ("ropes", "multirc"):
        collection = load_collection(bbir / name, "test")
        saved_run = read_trec_run(out / "runs" / f"{name}.trec")
        fresh_run = BM25(collection.corpus.ids, collection.corpus.get_many(collection.corpus.ids)).search(
            collection.queries)
        metrics = results["collections"][name]["metrics"]
        assert_metrics_equal(metrics, compute_metrics(saved_run, collection.qrels))
        assert_metrics_equal(metrics, compute_metrics(fresh_run, collection.qrels))
        assert metrics["num_queries"] == len(collection.qrels)
    assert_metrics_equal(results["averages"]["in_domain"], results["collections"]["ropes"]["metrics"])
    assert_metrics_equal(results["averages"]["zero_shot"], results["collections"]["multirc"]["metrics"])
    table = (out / "results.md").read_text().splitlines()
    rows = [line.split(" | ")[0].strip("| *") for line in table if line.startswith("| ") and "---" not in line]
    assert rows == ["collection", "ropes", "in-domain average", "multirc", "zero-shot average"]
    assert png_size(out / "ndcg_at_10.png") == (800, 500)


def test_pooled_mode(eval_cli, samples, tmp_path):
    out = tmp_path / "pooled"
    eval_cli.main(["--model", "bm25", "--data", *map(str, samples), "--pooled", "--out", str(out), "--no-progress"])
    results = json.loads((out / "results.json").read_text())
    n_docs = sum(len(load_collection(s, "test").corpus) for s in samples)
    for sample in samples:
        collection = load_collection(sample, "test")
        run = read_trec_run(out / "runs" / f"{collection.name}.trec")
        assert set(run) == {f"{collection.name}/{q}" for q in collection.queries}
        assert all(d.split("/")[0] in {s.name for s in samples} for docs in run.values() for d in docs)
        qrels = {f"{collection.name}/{q}": {f"{collection.name}/{d}": s for d, s in docs.items()}
                 for q, docs in collection.qrels.items()}
        entry = results["collections"][collection.name]
        assert_metrics_equal(entry["metrics"], compute_metrics(run, qrels))
        assert entry["info"]["num_docs"] == n_docs


def test_without_matplotlib_eval_refuses_up_front_unless_told_no_plots(eval_cli, samples, tmp_path, monkeypatch,
                                                                         capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as on the GPU image: not installed
    args = ["--model", "bm25", "--data", str(samples[0]), "--no-progress"]
    with pytest.raises(SystemExit):
        eval_cli.main([*args, "--out", str(tmp_path / "plots")])
    assert "the figures need matplotlib (pip install matplotlib), or pass --no-plots" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()  # refused before any work
    eval_cli.main([*args, "--out", str(tmp_path / "no-plots"), "--no-plots"])
    assert (tmp_path / "no-plots" / "results.json").is_file() and not list((tmp_path / "no-plots").glob("*.png"))
    eval_cli.main(["--compare", str(tmp_path / "no-plots"), "--out", str(tmp_path / "cmp"), "--no-plots"])
    assert (tmp_path / "cmp" / "compare.md").is_file() and not list((tmp_path / "cmp").glob("*.png"))


def test_output_folder_with_different_results_is_refused(eval_cli, samples, tmp_path):
    args = ["--model", "bm25", "--data", str(samples[0]), "--out", str(tmp_path / "o"), "--no-progress"]
    eval_cli.main(args)
    eval_cli.main(args)  # same settings: fine
    with pytest.raises(ResultsExistError, match=r"different evaluation \(k: 100 there, 10 now\)"):
        eval_cli.main([*args, "--k", "10"])
    eval_cli.main([*args, "--k", "10", "--overwrite"])
    assert json.loads((tmp_path / "o" / "results.json").read_text())["settings"]["k"] == 10


def test_config_file_form(eval_cli, samples, tmp_path, capsys):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({"model": "bm25", "data": [str(samples[0])], "zero-shot": [str(samples[1])],
                                      "k": 20, "bm25_k1": 1.2, "out": str(tmp_path / "c"), "no_progress": True}))
    eval_cli.main(["--config", str(config), "--k", "30"])  # the command line wins over the file
    settings = json.loads((tmp_path / "c" / "results.json").read_text())["settings"]
    assert (settings["k"], settings["bm25_k1"], settings["zero_shot"]) == (30, 1.2, ["multirc"])
    config.write_text(yaml.safe_dump({"model": "bm25", "topk": 5}))
    with pytest.raises(SystemExit):
        eval_cli.main(["--config", str(config)])
    assert "unknown option 'topk'" in capsys.readouterr().err


def test_compare_runs(eval_cli, samples, tmp_path):
    for name, k1, b in (("lucene_default", 0.9, 0.4), ("robertson_like", 1.5, 0.75)):
        eval_cli.main(["--model", "bm25", "--data", *map(str, samples), "--zero-shot", "multirc", "--bm25-k1",
                       str(k1), "--bm25-b", str(b), "--out", str(tmp_path / name), "--no-progress"])
    eval_cli.main(["--compare", str(tmp_path / "lucene_default"), str(tmp_path / "robertson_like" / "results.json"),
                   "--out", str(tmp_path / "cmp")])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| collection | lucene_default | robertson_like |" in table
    for name in ("lucene_default", "robertson_like"):
        results = json.loads((tmp_path / name / "results.json").read_text())
        assert f"{results['collections']['ropes']['metrics']['ndcg@10']:.4f}" in table
        assert f"{results['averages']['zero_shot']['ndcg@10']:.4f}" in table
    assert "multirc (zero-shot)" in table
    assert png_size(tmp_path / "cmp" / "compare_ndcg_at_10.png") == (800, 500)
    # the paired test over the per-query values, against the first run: its difference is that of the averages
    base, other = (json.loads((tmp_path / n / "results.json").read_text())["averages"]
                   for n in ("lucene_default", "robertson_like"))
    assert "Paired tests against lucene_default" in table
    for group in ("in_domain", "zero_shot", "all"):
        difference = 100 * (other[group]["ndcg@10"] - base[group]["ndcg@10"])
        assert f"| robertson_like | {group.replace('_', '-')} | {difference:+.2f} | [" in table


def test_model_folder_without_weights(eval_cli, tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"has no weights.*found: \['config.json'\]"):
        eval_cli.load_retriever(str(tmp_path))


class MiniLMRetriever:
    """BEIR-style encoders around sentence-transformers all-MiniLM-L6-v2, with a stand-in prompt attention
    (softmax over the first 8 embedding dimensions) to exercise the attention outputs."""

    def __init__(self, path):
        from sentence_transformers import SentenceTransformer

        self.st = SentenceTransformer(path, device="cpu")
        self.config = SimpleNamespace(representation="dense")
        self.corpus_calls = 0

    def _encode(self, texts, batch_size, max_length):
        if max_length:
            self.st.max_seq_length = max_length
        return self.st.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)

    def encode_queries(self, queries, batch_size=32, show_progress_bar=False, max_length=None):
        return self._encode(queries, batch_size, max_length)

    def encode_corpus(self, corpus, batch_size=32, show_progress_bar=False, max_length=None):
        self.corpus_calls += 1
        return self._encode([f"{d['title']} {d['text']}".strip() for d in corpus], batch_size, max_length)

    def prompt_attention(self, queries, batch_size=32):
        logits = 10 * self.encode_queries(queries)[:, :8]
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        return weights / weights.sum(axis=1, keepdims=True)


def test_dense_model_with_cache_and_attention(eval_cli, bbir, minilm_path, tmp_path, monkeypatch):
    samples = sample_of(bbir / "ropes", tmp_path / "ropes", 25), sample_of(bbir / "multirc", tmp_path / "multirc", 15)
    model = MiniLMRetriever(minilm_path)
    monkeypatch.setattr(eval_cli, "load_retriever", lambda name, *options: model)
    cache, out = tmp_path / "cache", tmp_path / "dense"
    args = ["--model", minilm_path, "--data", str(samples[0]), "--zero-shot", str(samples[1]), "--max-length", "64",
            "--batch-size", "16", "--cache-dir", str(cache), "--out", str(out), "--no-progress"]
    eval_cli.main(args)
    assert model.corpus_calls == 2 and len(list(cache.glob("*.vectors"))) == 2

    results = json.loads((out / "results.json").read_text())
    for sample in samples:
        collection = load_collection(sample, "test")
        entry = next(p for p in cache.glob("*.vectors")
                     if json.loads((p / "manifest.json").read_text())["key"]["corpus"] == collection.corpus.fingerprint)
        assert json.loads((entry / "manifest.json").read_text())["key"]["max_length"] == 64
        doc_vectors = model.encode_corpus(collection.corpus.get_many(collection.corpus.ids), 16, max_length=64)
        np.testing.assert_allclose(np.load(entry / "vectors.npy"), doc_vectors, atol=1e-5)
        scores = model.encode_queries(list(collection.queries.values()), 16, max_length=64) @ doc_vectors.T
        brute = {q: {collection.corpus.ids[j]: float(scores[i, j]) for j in range(scores.shape[1])}
                 for i, q in enumerate(collection.queries)}
        assert_metrics_equal(results["collections"][collection.name]["metrics"],
                             compute_metrics(brute, collection.qrels))

    calls = model.corpus_calls
    eval_cli.main(args)  # same settings: the corpus embeddings come from the cache
    assert model.corpus_calls == calls
    assert json.loads((out / "results.json").read_text())["collections"]["ropes"]["info"]["corpus_cache_hit"]

    attention = np.load(out / "attention.npy")
    labels = json.loads((out / "attention_tasks.json").read_text())
    n_queries = [len(load_collection(s, "test").queries) for s in samples]
    assert attention.shape == (sum(n_queries), 8) and labels == ["ropes"] * n_queries[0] + ["multirc"] * n_queries[1]
    assert png_size(out / "attention_heatmap.png") == png_size(out / "attention_projection.png") == (800, 500)


class SpladeRetriever:
    """BEIR-style sparse encoders: SPLADE max-pooled log(1 + relu(MLM logits)) from a small tuned BertForMaskedLM."""

    def __init__(self, path):
        from transformers import AutoModelForMaskedLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.mlm = AutoModelForMaskedLM.from_pretrained(path).eval()
        self.config = SimpleNamespace(representation="sparse")

    def _encode(self, texts, batch_size):
        import scipy.sparse as sp
        import torch

        rows = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(texts[start:start + batch_size], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")
            with torch.no_grad():
                weights = torch.log1p(torch.relu(self.mlm(**batch).logits)) * batch["attention_mask"][..., None]
            rows.append(sp.csr_matrix(weights.amax(dim=1).numpy()))
        return sp.vstack(rows, format="csr")

    def encode_queries(self, queries, batch_size=32, show_progress_bar=False):
        return self._encode(queries, batch_size)

    def encode_corpus(self, corpus, batch_size=32, show_progress_bar=False):
        return self._encode([f"{d['title']} {d['text']}".strip() for d in corpus], batch_size)


@pytest.mark.parametrize("prune", [None, 8])
def test_sparse_model_search_equals_dense_product(samples, splade_path, prune):
    from hyper_retrieval.evaluation.scoring import evaluate_collections
    from hyper_retrieval.search.corpus_encoder import CorpusEncoder
    from hyper_retrieval.search.index import prune_query_terms
    from hyper_retrieval.search.searchers import ModelSearcher

    model = SpladeRetriever(splade_path)
    collection = load_collection(samples[1], "test")
    searcher = ModelSearcher(CorpusEncoder(model, "splade-test", show_progress=False), prune_query_terms=prune)
    (result,) = evaluate_collections(searcher, [collection], zero_shot=set(), k=100)

    docs = model.encode_corpus(collection.corpus.get_many(collection.corpus.ids))
    queries = model.encode_queries(list(collection.queries.values()))
    queries = prune_query_terms(queries, prune) if prune else queries
    assert prune is None or queries.getnnz(axis=1).max() == prune
    scores = (queries @ docs.T).toarray()
    brute = {q: {collection.corpus.ids[j]: float(scores[i, j]) for j in np.flatnonzero(scores[i] > 0)}
             for i, q in enumerate(collection.queries)}
    assert_metrics_equal(result.metrics, compute_metrics(brute, collection.qrels))
    assert result.metrics["ndcg@10"] > 0.3  # the tuned SPLADE model retrieves, it is not noise


def test_saved_hyper_model_through_automodel(eval_cli, samples, minilm_path, tmp_path):
    """The real load path: a HypeR model saved with save_pretrained, loaded by AutoModel with remote code."""
    from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

    model_dir = tmp_path / "hyper"
    HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig()).save_pretrained(model_dir)
    out = tmp_path / "out"
    eval_cli.main(["--model", str(model_dir), "--data", str(samples[1]), "--max-length", "64", "--out", str(out),
                   "--cache-dir", "", "--no-progress", "--dtype", "float32"])  # sums to 1 within 1e-4 on AMX too
    results = json.loads((out / "results.json").read_text())
    collection = load_collection(samples[1], "test")
    assert results["settings"]["max_length"] == 64 and results["settings"]["index"] == "flat"
    assert_metrics_equal(results["collections"]["multirc"]["metrics"],
                         compute_metrics(read_trec_run(out / "runs" / "multirc.trec"), collection.qrels))
    attention = np.load(out / "attention.npy")
    assert attention.shape == (len(collection.queries), HyperPromptConfig().pool_size)
    np.testing.assert_allclose(attention.sum(axis=1), 1.0, atol=1e-4)


def test_search_keeps_its_queries_prompt_attention(samples, minilm_path):
    """Queries are encoded once: their attention over the pool comes with their vectors, in the search's result."""
    from hyper_retrieval.search.corpus_encoder import CorpusEncoder
    from hyper_retrieval.search.searchers import ModelSearcher
    from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

    model = HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig(pool_size=3))
    collection = load_collection(samples[1], "test")
    queries = list(collection.queries.values())
    vectors, attention = model.encode_queries(queries, batch_size=16, return_prompt_attention=True)
    np.testing.assert_allclose(vectors, model.encode_queries(queries, batch_size=16), atol=1e-6)
    np.testing.assert_allclose(attention, model.prompt_attention(queries, batch_size=16), atol=1e-6)
    searcher = ModelSearcher(CorpusEncoder(model, "hyper", batch_size=16, show_progress=False))
    model.prompt_attention = lambda *args, **kwargs: pytest.fail("the queries were encoded again")
    found = searcher.search(collection.corpus, collection.queries, 10)
    np.testing.assert_allclose(found.attention, attention, atol=1e-6)


def test_systems_sharing_a_passage_encoder_share_cached_corpus_embeddings(eval_cli, samples, minilm_path, tmp_path):
    """The benchmark's systems keep MiniLM's frozen passage encoder: the corpus is encoded once for all of them."""
    import torch

    from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

    def saved(name, **kwargs):
        torch.manual_seed(0)
        model = HyperRetrieverModel.from_backbone(minilm_path, share_encoders=False, freeze_passage_encoder=True,
                                                  **kwargs)
        with torch.no_grad():  # a "trained" query encoder
            model.query_encoder.get_input_embeddings().weight.mul_(1.1)
        model.save_pretrained(tmp_path / name)
        return model

    saved("hyper", hyper_prompt=HyperPromptConfig(pool_size=3))
    saved("multitask")
    changed = saved("changed")
    with torch.no_grad():
        changed.passage_encoder.get_input_embeddings().weight.mul_(1.1)
    changed.save_pretrained(tmp_path / "changed")
    hits = {}
    for name in ("hyper", "multitask", "changed"):
        eval_cli.main(["--model", str(tmp_path / name), "--data", str(samples[0]), "--cache-dir",
                       str(tmp_path / "cache"), "--out", str(tmp_path / f"eval-{name}"), "--no-progress"])
        results = json.loads((tmp_path / f"eval-{name}" / "results.json").read_text())
        hits[name] = results["collections"]["ropes"]["info"]["corpus_cache_hit"]
    assert hits == {"hyper": False, "multitask": True, "changed": False}
    runs = {n: (tmp_path / f"eval-{n}" / "runs" / "ropes.trec").read_text() for n in ("hyper", "multitask")}
    assert runs["hyper"] != runs["multitask"]  # the query sides differ: each run scores with its own queries


def test_pooled_corpus_reuses_the_per_collection_cache(samples, minilm_path, tmp_path):
    """A KILT-style pool is encoded component by component: after the per-collection runs it costs no encoding."""
    from hyper_retrieval.data.beir import pooled_collection
    from hyper_retrieval.search.corpus_encoder import CorpusEncoder
    from modeling_hyper import HyperRetrieverModel

    model = HyperRetrieverModel.from_backbone(minilm_path)
    encoder = CorpusEncoder(model, "minilm", batch_size=16, cache_dir=tmp_path, show_progress=False)
    collections = [load_collection(s, "test") for s in samples]
    separate = [encoder.encode(c.corpus) for c in collections]
    assert not any(hit for _, hit in separate)
    entries = sorted(tmp_path.glob("*.vectors"))
    model.encode_tokenized = lambda *a, **k: pytest.fail("the pool was encoded again")
    pooled, hit = encoder.encode(pooled_collection(collections).corpus)
    assert hit and sorted(tmp_path.glob("*.vectors")) == entries  # no entry of its own
    np.testing.assert_array_equal(pooled.load(), np.concatenate([e.load() for e, _ in separate]))
    np.testing.assert_array_equal(pooled.doc, np.arange(sum(len(c.corpus) for c in collections)))


def test_corpus_token_ids_are_cached_and_reused_by_another_model(samples, minilm_path, tmp_path):
    """Re-encoding a corpus with a newly trained model skips tokenization: the token store is keyed by content."""
    import torch

    from hyper_retrieval.search.corpus_encoder import CorpusEncoder
    from modeling_hyper import HyperRetrieverModel

    corpus = load_collection(samples[0], "test").corpus
    cache = tmp_path / "cache"
    first = HyperRetrieverModel.from_backbone(minilm_path)
    second = HyperRetrieverModel.from_backbone(minilm_path)
    with torch.no_grad():
        second.query_encoder.get_input_embeddings().weight.mul_(1.2)  # another "trained" model, same tokenizer
    expected = {m: m.encode_corpus(corpus.get_many(corpus.ids)) for m in (first, second)}
    second.tokenize_windows = lambda *a, **k: pytest.fail("the second model tokenized the corpus again")
    for model in (first, second):
        encoder = CorpusEncoder(model, f"model-{id(model)}", batch_size=16, cache_dir=cache, show_progress=False,
                                shard_docs=7)  # several shards, to check the offsets are joined right
        embeddings, hit = encoder.encode(corpus)
        assert not hit  # a different model: its embeddings are computed, from the first model's token store
        np.testing.assert_allclose(embeddings.load(), expected[model], atol=1e-5)
    stores = sorted(cache.glob("*.tokens"), key=lambda e: json.loads((e / "manifest.json").read_text())["key"]["rows"])
    assert len(stores) == -(-len(corpus) // 7)  # one token store per shard, shared by both models
    ids = np.concatenate([np.load(e / "ids.npy") for e in stores])
    lengths = np.concatenate([np.diff(np.load(e / "offsets.npy")) for e in stores])
    expected_ids, expected_offsets = first.tokenize(first.passage_texts(corpus.get_many(corpus.ids)))
    np.testing.assert_array_equal(lengths, np.diff(expected_offsets))
    np.testing.assert_array_equal(ids, expected_ids)


def test_bfloat16_weights_give_nearly_the_same_results(eval_cli, samples, minilm_path, tmp_path):
    from modeling_hyper import HyperRetrieverModel

    HyperRetrieverModel.from_backbone(minilm_path).save_pretrained(tmp_path / "model")
    ndcg = {}
    for dtype in ("float32", "bfloat16"):
        eval_cli.main(["--model", str(tmp_path / "model"), "--data", str(samples[0]), "--dtype", dtype,
                       "--cache-dir", "", "--out", str(tmp_path / dtype), "--no-progress"])
        results = json.loads((tmp_path / dtype / "results.json").read_text())
        assert results["settings"]["dtype"] == dtype
        ndcg[dtype] = results["collections"]["ropes"]["metrics"]["ndcg@10"]
    assert abs(ndcg["bfloat16"] - ndcg["float32"]) < 0.03, ndcg


def test_damaged_caches_are_computed_again_not_used(eval_cli, samples, minilm_path, tmp_path, caplog):
    """Truncated corpus vectors and shuffled token ids are caught by their checksums: same scores, a warning."""
    from modeling_hyper import HyperRetrieverModel

    HyperRetrieverModel.from_backbone(minilm_path, max_seq_length=64).save_pretrained(tmp_path / "model")
    args = ["--model", str(tmp_path / "model"), "--data", str(samples[0]), "--cache-dir", str(tmp_path / "cache"),
            "--no-progress", "--overwrite"]
    eval_cli.main([*args, "--out", str(tmp_path / "first")])
    (vectors,) = (tmp_path / "cache").glob("*.vectors/vectors.npy")
    vectors.write_bytes(vectors.read_bytes()[: vectors.stat().st_size // 2])
    (ids,) = (tmp_path / "cache").glob("*.tokens/ids.npy")
    np.save(ids, np.random.default_rng(0).permutation(np.load(ids)))
    with caplog.at_level("WARNING"):
        eval_cli.main([*args, "--out", str(tmp_path / "second")])
    assert str(vectors.parent) in caplog.text and str(ids.parent) in caplog.text
    first, second = (json.loads((tmp_path / o / "results.json").read_text()) for o in ("first", "second"))
    assert second["collections"]["ropes"]["info"]["corpus_cache_hit"] is False
    assert_metrics_equal(second["collections"]["ropes"]["metrics"], first["collections"]["ropes"]["metrics"])


SIDE_EFFECT = "from pathlib import Path\nPath({marker!r}).touch()\n"


def test_no_code_from_a_model_folder_runs_unless_asked(eval_cli, samples, minilm_path, tmp_path):
    """A HypeR folder loads with this repository's classes, whatever its .py files say; a tokenizer pointing at code
    beside it is not run; another model's own code needs --trust-remote-code."""
    from transformers import AutoConfig

    from modeling_hyper import HyperRetrieverModel

    marker = tmp_path / "code-ran"
    folder = tmp_path / "hyper"
    HyperRetrieverModel.from_backbone(minilm_path, max_seq_length=64).save_pretrained(folder)
    for name in ("modeling_hyper.py", "configuration_hyper.py", "evil_tokenizer.py"):
        (folder / name).write_text(SIDE_EFFECT.format(marker=str(marker)))
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
    tokenizer_config["auto_map"] = {"AutoTokenizer": ["evil_tokenizer.EvilTokenizer", None]}
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    HyperRetrieverModel.from_pretrained(folder)  # the tokenizer's auto_map is not followed
    assert not marker.exists()
    eval_cli.main(["--model", str(folder), "--data", str(samples[0]), "--cache-dir", "", "--no-progress",
                   "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "results.json").is_file() and not marker.exists()

    other = tmp_path / "other"
    other.mkdir()
    config = AutoConfig.from_pretrained(minilm_path).to_dict() | {
        "model_type": "evil", "auto_map": {"AutoConfig": "evil_config.EvilConfig", "AutoModel": "evil_config.Evil"}}
    (other / "config.json").write_text(json.dumps(config))
    (other / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (other / "evil_config.py").write_text(SIDE_EFFECT.format(marker=str(marker)))
    with pytest.raises(SystemExit, match="ships its own code.*--trust-remote-code"):
        eval_cli.main(["--model", str(other), "--data", str(samples[0]), "--cache-dir", "", "--no-progress",
                       "--out", str(tmp_path / "out-other")])
    assert not marker.exists()


def test_a_mistyped_model_folder_is_named(eval_cli, samples, tmp_path):
    with pytest.raises(SystemExit, match="--model ./outputs/nope/final: no such folder"):
        eval_cli.main(["--model", "./outputs/nope/final", "--data", str(samples[0]), "--out", str(tmp_path / "o")])


def test_help_loads_neither_torch_nor_faiss():
    """`eval.py --help` answers at once: the heavy libraries are imported only on the path that needs them."""
    import subprocess
    import sys

    code = ("import runpy, sys\nsys.argv = ['eval.py', '--help']\ntry:\n"
            "    runpy.run_path('eval.py', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('torch', 'faiss', 'transformers') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert "--hybrid" in result.stdout and result.stdout.strip().endswith("[]")


def test_every_option_has_help(eval_cli):
    undocumented = [a.option_strings for a in eval_cli.build_parser()._actions if a.option_strings and not a.help]
    assert undocumented == []


def test_compare_tells_same_named_runs_apart(eval_cli, samples, tmp_path):
    """Two evaluations saved under the same folder name (one model, two trainings) stay two columns and one test."""
    for profile, k1 in (("float32", 0.9), ("bf16", 1.5)):
        eval_cli.main(["--model", "bm25", "--data", str(samples[0]), "--bm25-k1", str(k1),
                       "--out", str(tmp_path / profile / "eval" / "hyper"), "--no-progress"])
    runs = [str(tmp_path / p / "eval" / "hyper") for p in ("float32", "bf16")]
    eval_cli.main(["--compare", *runs, "--out", str(tmp_path / "cmp")])
    table = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| collection | float32/eval/hyper | bf16/eval/hyper |" in table
    assert "Paired tests against float32/eval/hyper" in table and "| bf16/eval/hyper | in-domain |" in table
    with pytest.raises(SystemExit, match="the same run given more than once"):
        eval_cli.main(["--compare", runs[0], runs[0] + "/results.json", "--out", str(tmp_path / "cmp2")])


def _file_size_limited(limit: int):
    """For subprocess.run(preexec_fn=...): files in the child cannot grow past ``limit`` bytes (RLIMIT_FSIZE), and
    a write past it fails with EFBIG ("File too large") instead of killing the child: a full disk, for one run."""
    def limit_child() -> None:
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_child


def test_results_survive_a_full_disk_while_the_new_ones_are_written(samples, tmp_path):
    """eval.py --overwrite over an earlier evaluation, on a disk that fills while writing: the earlier files are
    all there, byte for byte, the command says which file failed, and --compare on the earlier results works."""
    out = tmp_path / "bm25"
    args = [sys.executable, "eval.py", "--model", "bm25", "--data", *map(str, samples), "--out", str(out),
            "--no-progress"]
    subprocess.run(args, cwd=REPO, check=True, capture_output=True, text=True)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert {Path("results.json"), Path("per_query.json"), Path("results.md"), Path("runs/ropes.trec")} <= set(before)
    limit = 4096  # the runs are far bigger: writing them fails
    assert max(len(before[Path("runs/ropes.trec")]), len(before[Path("per_query.json")])) > limit
    failed = subprocess.run([*args, "--k", "50", "--overwrite"], cwd=REPO, capture_output=True, text=True,
                            preexec_fn=_file_size_limited(limit))
    assert failed.returncode != 0 and "Traceback" not in failed.stderr, failed.stderr
    assert f"eval.py: {out}" in failed.stderr and "could not be written" in failed.stderr
    assert "the results there before are unchanged" in failed.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.rglob("*.tmp"))
    json.loads((out / "results.json").read_text())
    compared = subprocess.run([sys.executable, "eval.py", "--compare", str(out), "--out", str(tmp_path / "cmp")],
                              cwd=REPO, capture_output=True, text=True)
    assert compared.returncode == 0, compared.stderr
    assert "| collection | bm25 |" in (tmp_path / "cmp" / "compare.md").read_text()


def test_results_json_is_never_seen_half_written(tmp_path, monkeypatch):
    """A reader reading results.json while it is rewritten again and again always reads a whole one (each file is
    written under a temporary name and renamed); a write that fails leaves every earlier file as it was."""
    import threading

    from hyper_retrieval.evaluation import results as results_module
    from hyper_retrieval.evaluation.results import ResultsWriteError, write_results
    from hyper_retrieval.evaluation.scoring import CollectionResult

    run = {f"q{i}": {f"d{j}": float(j) for j in range(50)} for i in range(200)}
    collection = CollectionResult("c", False, {"ndcg@10": 0.5}, {q: {"ndcg@10": 0.5} for q in run}, run, {})

    def results(i: int) -> dict:
        return {"settings": {"model": "m", "split": "test", "round": i, "padding": ["x" * 100] * 20_000},
                "collections": {"c": {"zero_shot": False, "metrics": {"ndcg@10": 0.5}, "info": {}}}, "averages": {}}

    write_results(tmp_path, results(0), [collection])
    seen, broken, done = [], [], threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.append(json.loads((tmp_path / "results.json").read_text())["settings"]["round"])
            except ValueError as e:  # a file cut short (the old in-place write_text)
                broken.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(1, 25):
            write_results(tmp_path, results(i), [collection])
    finally:
        done.set()
        reader.join()
    assert len(seen) > 1 and not broken, broken[:1]
    before = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def full_disk(_results):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(results_module, "results_markdown", full_disk)  # the last file to write fails
    with pytest.raises(ResultsWriteError, match=r"results\.md: could not be written.*No space left"):
        write_results(tmp_path, results(99), [collection])
    assert {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
