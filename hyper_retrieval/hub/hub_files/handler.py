"""Inference Endpoints handler of a HypeR retriever (ships in the model repository as handler.py).

JSON payloads:
- sentence similarity (the Hub widget's): {"inputs": {"source_sentence": str, "sentences": [str, ...]}}
  -> [score, ...]: the source sentence is encoded as a query (with its hyper-prompt), each sentence as a passage
  (without prompt); the score is their dot product (the cosine for the L2-normalised dense models), a long
  passage's being that of its best window (MaxP).
- feature extraction: {"inputs": str | [str, ...], "parameters": {"task": "query" | "document", "truncate": bool,
  "normalize": bool}} -> one embedding (a list of floats) for a string, a list of them for a list; "task" defaults to
  "query", "truncate" to true (false: a text over what the model reads is an error), "normalize" to false
  (true: unit-length vectors).
A malformed payload (not these forms, a blank or invalid-Unicode text, more than 256 texts or 100,000 characters in
one) is answered with {"error": message}, not an exception.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from transformers import AutoModel

TASKS = ("query", "document")
PARAMETERS = ("task", "truncate", "normalize")  # truncate: true (default) cuts at max_seq_length, false refuses
MAX_TEXTS = 256  # texts per request
MAX_CHARS = 100_000  # characters per text


class PayloadError(ValueError):
    """The request does not follow one of the payload forms above."""


def _text(text: Any, where: str) -> str:
    """A non-blank string of valid Unicode (no lone surrogates), at most MAX_CHARS long, or PayloadError."""
    if not isinstance(text, str) or not text.strip():
        raise PayloadError(f"{where} must be a non-blank string, got {text!r}")
    if len(text) > MAX_CHARS:
        raise PayloadError(f"{where} has {len(text)} characters; at most {MAX_CHARS} are read")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise PayloadError(f"{where} is not valid Unicode text ({e.reason} at character {e.start})") from None
    return text


def _texts(value: Any, where: str) -> list[str]:
    """A non-empty list of at most MAX_TEXTS valid texts, or PayloadError naming `where`."""
    if not isinstance(value, list) or not value:
        raise PayloadError(f"{where} must be a non-empty list of strings, got {type(value).__name__}")
    if len(value) > MAX_TEXTS:
        raise PayloadError(f"{where} has {len(value)} texts; send at most {MAX_TEXTS} per request")
    return [_text(text, f"{where}[{i}]") for i, text in enumerate(value)]


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


class EndpointHandler:
    """Loads the repository's model once; each call answers one payload."""

    def __init__(self, path: str = ""):
        self.model = AutoModel.from_pretrained(path or ".", trust_remote_code=True).eval()

    def __call__(self, data: dict[str, Any]) -> list | dict[str, str]:
        try:
            if not isinstance(data, dict) or "inputs" not in data:
                raise PayloadError('the payload must be a JSON object with an "inputs" key')
            parameters = data.get("parameters") or {}
            if not isinstance(parameters, dict) or set(parameters) - set(PARAMETERS):
                raise PayloadError(f'"parameters" must be an object with keys among {list(PARAMETERS)}')
            inputs = data["inputs"]
            if isinstance(inputs, dict):
                return self._similarity_payload(inputs)
            texts = _texts([inputs] if isinstance(inputs, str) else inputs, '"inputs"')
            for key in ("truncate", "normalize"):
                if not isinstance(parameters.get(key, False), bool):
                    raise PayloadError(f'"{key}" must be true or false, got {parameters[key]!r}')
            if parameters.get("truncate", True) is False:
                self._check_lengths(texts, parameters.get("task", "query"))
            vectors = self.embed(texts, parameters.get("task", "query"))
            if parameters.get("normalize", False):
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            return vectors[0].tolist() if isinstance(inputs, str) else vectors.tolist()
        except PayloadError as e:
            return {"error": str(e)}

    def _similarity_payload(self, inputs: dict[str, Any]) -> list[float]:
        expected = {"source_sentence", "sentences"}
        if set(inputs) != expected:
            raise PayloadError(f'"inputs" as an object needs exactly the keys {sorted(expected)}, got {sorted(inputs)}')
        source = _text(inputs["source_sentence"], '"source_sentence"')
        return self.similarity(source, _texts(inputs["sentences"], '"sentences"'))

    def _check_lengths(self, texts: list[str], task: str) -> None:
        """With "truncate": false, a text longer than the model reads (a query: the config's query length) is an
        error rather than cut."""
        config = self.model.config
        limit = getattr(config, "query_length", config.max_seq_length) if task == "query" else config.max_seq_length
        for i, ids in enumerate(self.model.tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]):
            if len(ids) > limit:
                raise PayloadError(f'"inputs"[{i}] has {len(ids)} tokens, over the {limit} the model reads '
                                   '(send "truncate": true to cut it)')

    def embed(self, texts: list[str], task: str = "query") -> np.ndarray:
        """(n, d) embeddings (dense arrays also for the sparse kind): queries with the prompt, documents without."""
        if task not in TASKS:
            raise PayloadError(f'"task" must be one of {list(TASKS)}, got {task!r}')
        encode = self.model.encode_queries if task == "query" else self.model.encode_corpus
        return _dense(encode(texts))

    def similarity(self, source: str, sentences: list[str]) -> list[float]:
        """Dot products of the source (a query) with each sentence (a passage); a passage longer than the model's
        max_seq_length scores its best window (MaxP), so it is read whole."""
        return self.model.score_passages(source, sentences, windows="max").tolist()

    def prompt_attention(self, query: str) -> list[float] | None:
        """The query's attention over the prompt pool (N weights summing to 1), None for a model without a pool."""
        if self.model.hyper_prompt is None:
            return None
        return self.model.prompt_attention([query])[0].tolist()
