"""Behaviour with the real all-MiniLM-L6-v2 and SPLADE weights: agreement with sentence-transformers, bad input."""

import numpy as np
import pytest
import scipy.sparse
import torch

from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

QUERIES = ["who wrote the novel moby dick", "what causes the seasons on earth", "a", "Is caffeine a stimulant?"]


@pytest.fixture(scope="module")
def plain_minilm(minilm_path):
    return HyperRetrieverModel.from_backbone(minilm_path)


@pytest.fixture(scope="module")
def hyper_minilm(minilm_path):
    torch.manual_seed(0)
    return HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig(pool_size=5))


def test_no_prompt_equals_sentence_transformers(plain_minilm, minilm_path):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(minilm_path, device="cpu")
    passages = [{"title": "Moby-Dick", "text": "Moby-Dick is an 1851 novel by Herman Melville."}]
    ours_q = plain_minilm.encode_queries(QUERIES, batch_size=3)
    ours_p = plain_minilm.encode_corpus(passages)
    assert ours_q.dtype == np.float32 and ours_q.shape == (4, 384)
    cosine_q = (ours_q * reference.encode(QUERIES, normalize_embeddings=True)).sum(1)
    cosine_p = (ours_p * reference.encode(["Moby-Dick Moby-Dick is an 1851 novel by Herman Melville."])).sum(1)
    assert cosine_q.min() > 0.9999 and cosine_p.min() > 0.9999


def test_batches_sorted_by_length_keep_input_order(hyper_minilm):
    together = hyper_minilm.encode_queries(QUERIES, batch_size=2)
    alone = np.stack([hyper_minilm.encode_queries([q])[0] for q in QUERIES])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    attention = hyper_minilm.prompt_attention(QUERIES, batch_size=3)
    assert attention.shape == (4, 5)
    np.testing.assert_allclose(attention.sum(1), 1.0, atol=1e-6)


def test_hyper_prompt_changes_queries_not_passages(plain_minilm, hyper_minilm):
    docs = ["The seasons are caused by the tilt of the Earth's axis."]
    np.testing.assert_array_equal(hyper_minilm.encode_corpus(docs), plain_minilm.encode_corpus(docs))
    assert np.abs(hyper_minilm.encode_queries(QUERIES) - plain_minilm.encode_queries(QUERIES)).max() > 1e-3


def test_bad_input_gets_clear_errors(hyper_minilm):
    with pytest.raises(ValueError, match=r"queries\[1\] is empty"):
        hyper_minilm.encode_queries(["fine", "   "])
    with pytest.raises(TypeError, match="list of strings"):
        hyper_minilm.encode_queries("not a list")
    with pytest.raises(TypeError, match=r"queries\[0\] is a int"):
        hyper_minilm.encode_queries([3])
    with pytest.raises(ValueError, match=r"corpus\[0\] has no 'text' key"):
        hyper_minilm.encode_corpus([{"title": "t"}])
    assert hyper_minilm.encode_queries([]).shape == (0, 384)  # documented: empty list -> empty result
    assert hyper_minilm.prompt_attention([]).shape == (0, 5)


def test_text_longer_than_max_length_is_truncated(hyper_minilm):
    long_query = "retrieval " * 2000
    capped = "retrieval " * (hyper_minilm.config.max_seq_length - 2)
    np.testing.assert_allclose(
        hyper_minilm.encode_queries([long_query]), hyper_minilm.encode_queries([capped]), atol=1e-5
    )


def test_sparse_needs_an_mlm_head(minilm_path):
    with pytest.raises(ValueError, match="MLM head"):
        HyperRetrieverModel.from_backbone(minilm_path, representation="sparse")


def test_sparse_splade_encodes_to_vocabulary_csr(splade_path):
    model = HyperRetrieverModel.from_backbone(
        splade_path, representation="sparse", hyper_prompt=HyperPromptConfig(pool_size=3)
    )
    queries = model.encode_queries(QUERIES[:2])
    docs = model.encode_corpus(["Herman Melville wrote Moby-Dick.", "Axial tilt causes seasons."])
    assert scipy.sparse.issparse(queries) and queries.shape == (2, model.config.backbone_config.vocab_size)
    assert (queries.data > 0).all() and 0 < queries.nnz < 0.5 * np.prod(queries.shape)
    scores = (queries @ docs.T).toarray()
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]  # SPLADE matches terms


def test_batches_are_sorted_by_tokens_and_cover_every_text_once(plain_minilm, bbir):
    import json

    texts = []
    for name in ("drop", "qasc", "vitaminc"):
        with open(bbir / name / "corpus.jsonl") as f:
            texts += [json.loads(line)["text"] for _, line in zip(range(200), f, strict=False)]
    batches = list(plain_minilm._store_batches(*plain_minilm.tokenize(texts), batch_size=32))
    rows = np.concatenate([r for r, _, _ in batches])
    assert sorted(rows.tolist()) == list(range(len(texts)))
    padded = sum(mask.numel() for _, _, mask in batches)
    lengths = [len(ids) for ids in plain_minilm.tokenizer(texts, truncation=True, max_length=256)["input_ids"]]
    by_characters = np.argsort([-len(t) for t in texts], kind="stable")
    char_batches = [by_characters[i : i + 32] for i in range(0, len(texts), 32)]
    char_padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in char_batches)
    assert padded < 0.95 * char_padded  # sorting by tokens wastes less than sorting by characters
    for _, ids, mask in batches:
        assert (mask.sum(1).diff() <= 0).all()  # longest first within a batch
        assert ids.shape[1] == mask.sum(1).max() <= plain_minilm.config.max_seq_length


def test_prefetch_yields_the_same_batches_and_raises_their_errors():
    from modeling_hyper.encoding_hyper import prefetch

    assert list(prefetch(iter(range(50)), depth=3)) == list(range(50))

    def broken():
        yield 1
        raise ValueError("tokenizer exploded")

    with pytest.raises(ValueError, match="tokenizer exploded"):
        list(prefetch(broken()))


def test_from_backbone_with_the_hub_id_works_offline_and_saves_no_local_path(tmp_path, minilm_path):
    """The README's snippet: the pip-shipped weights of a known Hub id load with no network (HF_HUB_OFFLINE is set
    for the tests), and what is saved names the Hub id, not the site-packages copy."""
    import json
    import subprocess
    import sys

    hub_id = "sentence-transformers/all-MiniLM-L6-v2"
    model = HyperRetrieverModel.from_backbone(hub_id, hyper_prompt=HyperPromptConfig(pool_size=2))
    reference = HyperRetrieverModel.from_backbone(minilm_path)
    for name, tensor in reference.query_encoder.state_dict().items():
        assert torch.equal(model.query_encoder.state_dict()[name], tensor), name
    model.save_pretrained(tmp_path / "saved")
    model.save_adapter(tmp_path / "adapter")
    saved = (tmp_path / "saved" / "config.json").read_text() + (tmp_path / "adapter" / "hyper_prompt_config.json"
                                                                 ).read_text()
    assert "site-packages" not in saved and minilm_path not in saved
    assert json.loads((tmp_path / "adapter" / "hyper_prompt_config.json").read_text())[
        "base_model_name_or_path"] == hub_id
    # installed (pip install -e .): importable from any folder
    code = "import modeling_hyper, hyper_retrieval.search.searchers; print(modeling_hyper.__file__)"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_encode_keywords_of_beir_and_sentence_transformers(hyper_minilm):
    texts = ["who wrote moby dick", "what causes the seasons"]
    arrays = hyper_minilm.encode_queries(texts)
    tensors = hyper_minilm.encode_queries(texts, convert_to_tensor=True, normalize_embeddings=True)
    assert isinstance(tensors, torch.Tensor)
    np.testing.assert_allclose(tensors.numpy(), arrays / np.linalg.norm(arrays, axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(TypeError, match="devise"):
        hyper_minilm.encode_queries(texts, devise="cpu")  # a misspelt keyword is an error, not ignored
    with pytest.raises(TypeError, match="normalise"):
        hyper_minilm.encode_corpus(texts, normalise=True)


def test_a_text_over_the_backbones_positions_is_a_clear_error(hyper_minilm, tmp_path):
    from transformers import pipeline

    hyper_minilm.save_pretrained(tmp_path / "m")
    extractor = pipeline("feature-extraction", model=str(tmp_path / "m"), trust_remote_code=True)
    long = " ".join(["season"] * 700)
    with pytest.raises(ValueError, match="tokens exceed the backbone's 512 positions; truncate"):
        extractor(long)
    assert np.asarray(extractor(long, truncation=True)).shape == (1, 384)
    assert hyper_minilm.max_window_length() == 512  # the tokenizer's saved limit (max_seq_length) is not the ceiling
    reloaded = HyperRetrieverModel.from_pretrained(tmp_path / "m")
    assert reloaded.tokenizer.model_max_length == reloaded.config.max_seq_length and reloaded.max_window_length() == 512
