"""The Inference Endpoints handler shipped in the exported folder: both payloads, and clear errors for bad ones;
hyper-prompt adapters chosen per request (on tiny models)."""

import copy
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_run import POOL_SIZE
from tiny import tiny_model
from transformers import AutoModel, AutoTokenizer

SOURCE = "what causes the seasons on earth"
SENTENCES = ["The tilt of Earth's axis causes the seasons.", "Moby-Dick is a novel by Herman Melville.",
             "Tides are raised by the Moon."]
HUB_FILES = Path(__file__).resolve().parents[1] / "hyper_retrieval" / "hub" / "hub_files"
FROZEN = dict(freeze_query_backbone=True, share_encoders=False, freeze_passage_encoder=True,
              backbone_name_or_path="tiny-bert", max_seq_length=64)  # adapters that load onto any model of this
# backbone (tiny: 128 positions)


def load_handler_module(path: Path):
    spec = importlib.util.spec_from_file_location(f"handler_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def handler(hub_run):
    """EndpointHandler as Inference Endpoints builds it: handler.py imported from the repository, given its path."""
    return load_handler_module(hub_run.export_dir / "handler.py").EndpointHandler(str(hub_run.export_dir))


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
     '"parameters" must be an object with keys among [\'task\', \'truncate\', \'normalize\', \'adapter\']'),
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


# ----------------------------------------------------------------- adapters: two on one frozen tiny backbone
def make_tiny_adapters(minilm_path: str, root: Path) -> Path:
    """As tests/test_adapters.py builds them: two hyper-prompts trained (in effect) on one frozen tiny backbone with
    MiniLM's tokenizer, saved as adapters root/a and root/b; root/backbone the plain backbone (no prompt) saved as a
    model; root/model_b adapter b's whole model (b its own "default")."""
    torch.manual_seed(0)
    first = tiny_model(pool_size=4, seed=0, **FROZEN)
    first.tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    second = copy.deepcopy(first)
    second.hyper_prompt.reset_pool()
    for seed, (name, model) in enumerate({"a": first, "b": second}.items(), start=1):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in model.hyper_prompt.parameters():
                param.add_(torch.randn(param.shape, generator=generator) * 0.5)
        model.calibrate_synthesizer([SOURCE, *SENTENCES])
        model.save_adapter(root / name)
    second.save_pretrained(root / "model_b")
    first.delete_adapter("default")
    first.save_pretrained(root / "backbone")
    return root


def alone(root: Path, name: str | None):
    """The saved backbone holding only adapter `name` (None: none), as AutoModel loads it."""
    model = AutoModel.from_pretrained(root / "backbone", trust_remote_code=True).eval()
    if name is not None:
        model.load_adapter(root / name, adapter_name=name)
    return model


@pytest.fixture(scope="module")
def tiny_root(minilm_path, tmp_path_factory) -> Path:
    return make_tiny_adapters(minilm_path, tmp_path_factory.mktemp("tiny_adapters"))


@pytest.fixture(scope="module")
def singles(tiny_root):
    return {name: alone(tiny_root, name) for name in ("a", "b", None)}


@pytest.fixture(scope="module")
def handler_module():
    return load_handler_module(HUB_FILES / "handler.py")


@pytest.fixture(scope="module")
def two_adapters(handler_module, tiny_root):
    """A handler of the plain backbone given adapters a and b (a, loaded first, is the active one)."""
    adapters = {"a": str(tiny_root / "a"), "b": str(tiny_root / "b")}
    return handler_module.EndpointHandler(str(tiny_root / "backbone"), adapters=adapters)


def test_each_adapter_answers_with_its_own_query_embeddings(two_adapters, singles):
    assert two_adapters.model.adapter_names == ["a", "b"] and two_adapters.model.active_adapter == "a"
    vectors = {}
    for name in ("a", "b"):
        vectors[name] = answer(two_adapters, {"inputs": SOURCE, "parameters": {"adapter": name}})
        np.testing.assert_allclose(vectors[name], singles[name].encode_queries([SOURCE], adapter=name)[0],
                                   rtol=0, atol=1e-6)
        batch = answer(two_adapters, {"inputs": SENTENCES, "parameters": {"task": "query", "adapter": name,
                                                                           "normalize": True}})
        np.testing.assert_allclose(batch, singles[name].encode_queries(SENTENCES, normalize_embeddings=True),
                                   rtol=0, atol=1e-6)
        np.testing.assert_allclose(two_adapters.embed([SOURCE], adapter=name)[0], vectors[name], rtol=0, atol=1e-6)
    assert np.abs(np.array(vectors["a"]) - np.array(vectors["b"])).max() > 1e-2
    assert answer(two_adapters, {"inputs": SOURCE}) == vectors["a"]  # none named: the active one


def test_document_embeddings_are_the_same_whatever_the_adapter(two_adapters, singles):
    plain = singles[None].encode_corpus(SENTENCES)
    for parameters in ({}, {"adapter": "a"}, {"adapter": "b"}):
        documents = answer(two_adapters, {"inputs": SENTENCES, "parameters": {"task": "document", **parameters}})
        np.testing.assert_allclose(documents, plain, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(two_adapters.embed(SENTENCES, "document", adapter="b"),
                                  two_adapters.embed(SENTENCES, "document"))


def test_similarity_form_and_prompt_attention_with_an_adapter(two_adapters, singles):
    passages = singles[None].encode_corpus(SENTENCES)
    scores = {}
    for name in ("a", "b"):
        payload = {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES}, "parameters": {"adapter": name}}
        scores[name] = answer(two_adapters, payload)
        expected = passages @ singles[name].encode_queries([SOURCE], adapter=name)[0]
        np.testing.assert_allclose(scores[name], expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(two_adapters.similarity(SOURCE, SENTENCES, adapter=name), expected, atol=1e-6)
        attention = two_adapters.prompt_attention(SOURCE, adapter=name)
        np.testing.assert_allclose(attention, singles[name].prompt_attention([SOURCE], adapter=name)[0], atol=1e-6)
    assert np.abs(np.array(scores["a"]) - np.array(scores["b"])).max() > 1e-3
    default = answer(two_adapters, {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES}})
    assert default == scores["a"]
    assert two_adapters.prompt_attention(SOURCE) == two_adapters.prompt_attention(SOURCE, adapter="a")


@pytest.mark.parametrize("parameters, message", [
    ({"adapter": "c"}, "\"adapter\": unknown adapter 'c'; loaded: ['a', 'b']"),
    ({"adapter": ""}, "unknown adapter ''; loaded: ['a', 'b']"),
    ({"adapter": 3}, '"adapter" must be a string naming a loaded adapter, got 3'),
    ({"adapter": None}, '"adapter" must be a string naming a loaded adapter, got None'),
    ({"adapter": ["a"]}, '"adapter" must be a string naming a loaded adapter'),
])
@pytest.mark.parametrize("form", ["features", "documents", "similarity"])
def test_an_unknown_or_non_string_adapter_is_a_400(two_adapters, parameters, message, form):
    inputs = {"features": SOURCE, "documents": SENTENCES,
              "similarity": {"source_sentence": SOURCE, "sentences": SENTENCES}}[form]
    extra = {"task": "document"} if form == "documents" else {}
    result = answer(two_adapters, {"inputs": inputs, "parameters": {**parameters, **extra}})
    assert list(result) == ["error"] and message in result["error"], result  # a 400: no "status" key
    assert two_adapters.model.active_adapter == "a"


def test_the_similarity_form_takes_only_the_adapter_parameter(two_adapters):
    result = answer(two_adapters, {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES},
                                   "parameters": {"adapter": "b", "normalize": True}})
    assert result == {"error": '"parameters" of the sentence-similarity form (an "inputs" object) takes only '
                               "['adapter'], got ['normalize']"}


def test_python_methods_refuse_an_unknown_adapter(two_adapters, handler_module):
    for call in (lambda: two_adapters.prompt_attention(SOURCE, adapter="c"),
                 lambda: two_adapters.similarity(SOURCE, SENTENCES, adapter="c"),
                 lambda: two_adapters.embed(SENTENCES, "document", adapter="c")):
        with pytest.raises(handler_module.PayloadError, match=r"unknown adapter 'c'; loaded: \['a', 'b'\]"):
            call()


def test_requests_leave_the_active_adapter_unchanged(two_adapters, singles):
    model = two_adapters.model
    prompt = model.hyper_prompt
    for payload in ({"inputs": SOURCE, "parameters": {"adapter": "b"}},
                    {"inputs": {"source_sentence": SOURCE, "sentences": SENTENCES}, "parameters": {"adapter": "b"}},
                    {"inputs": SOURCE, "parameters": {"adapter": "b", "truncate": False}},
                    {"inputs": " ".join(["seasons"] * 200), "parameters": {"adapter": "b", "truncate": False}},
                    {"inputs": SOURCE, "parameters": {"adapter": "nope"}}):
        answer(two_adapters, payload)
        two_adapters.prompt_attention(SOURCE, adapter="b")
        assert model.active_adapter == "a" and model.hyper_prompt is prompt and model.adapter_names == ["a", "b"]
    assert two_adapters.adapters() == {"adapters": ["a", "b"], "active": "a"}
    np.testing.assert_allclose(answer(two_adapters, {"inputs": SOURCE}),
                               singles["a"].encode_queries([SOURCE])[0], rtol=0, atol=1e-6)


def test_adapters_under_the_model_folder_are_loaded(handler_module, tiny_root, singles, tmp_path):
    """<path>/adapters/<name>/ holding hyper_prompt_config.json loads under <name>, beside the model's own ("default",
    here adapter b's) and those given; other subfolders and files there are not adapters."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_root / "model_b", folder)
    shutil.copytree(tiny_root / "a", folder / "adapters" / "qa")
    (folder / "adapters" / "notes").mkdir()
    (folder / "adapters" / "notes" / "README.md").write_text("not an adapter")
    (folder / "adapters" / "README.md").write_text("the adapters of this model")
    handler = handler_module.EndpointHandler(str(folder), adapters={"b2": str(tiny_root / "b")})
    assert handler.adapters() == {"adapters": ["default", "qa", "b2"], "active": "default"}
    for name, expected in (("qa", "a"), ("b2", "b"), ("default", "b")):
        vector = answer(handler, {"inputs": SOURCE, "parameters": {"adapter": name}})
        np.testing.assert_allclose(vector, singles[expected].encode_queries([SOURCE])[0], rtol=0, atol=1e-6)
    assert "loaded: ['default', 'qa', 'b2']" in answer(handler, {"inputs": SOURCE, "parameters": {"adapter": "a"}})[
        "error"]
    with pytest.raises(ValueError, match="an adapter named 'qa' is loaded already"):
        handler_module.EndpointHandler(str(folder), adapters={"qa": str(tiny_root / "b")})
