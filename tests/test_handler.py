"""The Inference Endpoints handler shipped in the exported folder: both payloads, and clear errors for bad ones."""

import importlib.util
import json

import numpy as np
import pytest
from hub_run import POOL_SIZE

SOURCE = "what causes the seasons on earth"
SENTENCES = ["The tilt of Earth's axis causes the seasons.", "Moby-Dick is a novel by Herman Melville.",
             "Tides are raised by the Moon."]


@pytest.fixture(scope="module")
def handler(hub_run):
    """EndpointHandler as Inference Endpoints builds it: handler.py imported from the repository, given its path."""
    spec = importlib.util.spec_from_file_location("exported_handler", hub_run.export_dir / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(hub_run.export_dir))


def answer(handler, payload):
    """The handler's answer after a JSON round trip, as the endpoint would send it."""
    return json.loads(json.dumps(handler(json.loads(json.dumps(payload)))))


def test_sentence_similarity_payload(handler, hub_run):
    scores = answer(handler, {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES}})
    expected = hub_run.model.encode_corpus(SENTENCES) @ hub_run.model.encode_queries([SOURCE])[0]
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-6)
    assert int(np.argmax(scores)) == 0  # the passage that answers the query ranks first


def test_a_long_passage_is_read_whole(handler, hub_run):
    """The answer past the first max_seq_length tokens still counts: the passage scores its best window (MaxP)."""
    filler = " ".join(["Moby-Dick is a novel by Herman Melville about a whaling voyage."] * 40)
    long = f"{filler} The tilt of Earth's axis causes the seasons."
    scores = answer(handler, {"inputs": {"source_sentence": SOURCE, "sentences": [long, SENTENCES[1]]}})
    query = hub_run.model.encode_queries([SOURCE])[0]
    first_window = float(hub_run.model.encode_corpus([long])[0] @ query)
    assert len(hub_run.model.tokenizer(long)["input_ids"]) > 2 * hub_run.model.config.max_seq_length
    assert scores[0] > first_window + 0.1 and scores[0] > scores[1]
    assert scores[1] == pytest.approx(float(hub_run.model.encode_corpus([SENTENCES[1]])[0] @ query), abs=1e-6)


def test_feature_extraction_payloads(handler, hub_run):
    one = answer(handler, {"inputs": SOURCE})
    assert isinstance(one, list) and len(one) == 384 and all(isinstance(x, float) for x in one)
    np.testing.assert_allclose(one, hub_run.model.encode_queries([SOURCE])[0], atol=1e-6)
    queries = answer(handler, {"inputs": SENTENCES})
    documents = answer(handler, {"inputs": SENTENCES, "parameters": {"task": "document"}})
    np.testing.assert_allclose(queries, hub_run.model.encode_queries(SENTENCES), atol=1e-6)
    np.testing.assert_allclose(documents, hub_run.model.encode_corpus(SENTENCES), atol=1e-6)
    assert np.abs(np.array(queries) - np.array(documents)).max() > 1e-3  # the query side carries the hyper-prompt


def test_prompt_attention(handler, hub_run):
    attention = handler.prompt_attention(SOURCE)
    assert len(attention) == POOL_SIZE and sum(attention) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(attention, hub_run.model.prompt_attention([SOURCE])[0], atol=1e-6)


@pytest.mark.parametrize("payload, message", [
    ([SOURCE], 'a JSON object with an "inputs" key'),
    ({"text": SOURCE}, 'a JSON object with an "inputs" key'),
    ({"inputs": 42}, '"inputs" must be a non-empty list of strings, got int'),
    ({"inputs": []}, '"inputs" must be a non-empty list of strings, got list'),
    ({"inputs": "  "}, '"inputs"[0] must be a non-blank string'),
    ({"inputs": [SOURCE, 3]}, '"inputs"[1] must be a non-blank string, got 3'),
    ({"inputs": {"source_sentence": SOURCE}}, "needs exactly the keys ['sentences', 'source_sentence']"),
    ({"inputs": {"source_sentence": SOURCE, "sentences": "one"}}, '"sentences" must be a non-empty list of strings'),
    ({"inputs": {"source_sentence": SOURCE, "sentences": [SOURCE, None]}}, '"sentences"[1] must be a non-blank'),
    ({"inputs": {"source_sentence": 5, "sentences": SENTENCES}}, '"source_sentence" must be a non-blank string'),
    ({"inputs": SOURCE, "parameters": {"task": "passage"}}, '"task" must be one of [\'query\', \'document\']'),
    ({"inputs": SOURCE, "parameters": {"top_k": 3}},
     '"parameters" must be an object with keys among [\'task\', \'truncate\', \'normalize\']'),
    ({"inputs": SOURCE, "parameters": "query"}, '"parameters" must be an object'),
])
def test_malformed_payloads_get_an_error_message(handler, payload, message):
    result = answer(handler, payload)
    assert list(result) == ["error"] and message in result["error"], result


def test_invalid_unicode_and_oversized_batches_get_an_error(handler):
    assert "error" in handler({"inputs": {"source_sentence": "\ud800 query", "sentences": ["a b"]}})
    answer = handler({"inputs": {"source_sentence": SOURCE, "sentences": ["ok", "bad \udfff"]}})
    assert answer == {"error": answer["error"]} and '"sentences"[1] is not valid Unicode' in answer["error"]
    answer = handler({"inputs": ["a text"] * 257})
    assert "send at most 256" in answer["error"]
    assert "at most 100000 are read" in handler({"inputs": "x" * 100_001})["error"]


def test_standard_parameters_truncate_and_normalize(handler, hub_run):
    long = " ".join(["seasons"] * 200)  # over the model's 64 tokens
    raw = np.array(answer(handler, {"inputs": [SOURCE, long], "parameters": {"task": "document"}}))
    unit = np.array(answer(handler, {"inputs": [SOURCE, long], "parameters": {"task": "document", "normalize": True}}))
    np.testing.assert_allclose(unit, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)
    refused = answer(handler, {"inputs": [SOURCE, long], "parameters": {"truncate": False}})
    assert '"inputs"[1] has' in refused["error"] and "over the 64" in refused["error"]
    assert answer(handler, {"inputs": SOURCE, "parameters": {"truncate": False}}) == answer(handler, {"inputs": SOURCE})
    assert "must be true or false" in answer(handler, {"inputs": SOURCE, "parameters": {"normalize": "yes"}})["error"]


def test_work_per_request_is_bounded_and_long_texts_are_cut_before_tokenizing(handler, hub_run):
    import time

    long = "The tilt of Earth's axis causes the seasons. " * 2000  # ~90,000 characters, ~18,000 tokens
    assert answer(handler, {"inputs": [long] * 256})["status"] == 413  # 23 M characters: refused before tokenizing
    start = time.perf_counter()
    vectors = answer(handler, {"inputs": [long] * 4, "parameters": {"task": "document"}})
    assert time.perf_counter() - start < 5  # four embeddings of what the model reads, not of 72,000 tokens
    expected = hub_run.model.encode_corpus([long])[0]
    np.testing.assert_allclose(vectors[0], expected, rtol=0, atol=1e-5)  # the cut text reads as the whole one
    documents = ["word " * 300] * 256  # 256 documents read to max_seq_length each: within the bound
    assert len(answer(handler, {"inputs": documents, "parameters": {"task": "document"}})) == 256
    refused = answer(handler, {"inputs": {"source_sentence": SOURCE, "sentences": ["word " * 2000] * 20}})
    assert refused["status"] == 413 and "at most 32768 per request" in refused["error"]
