"""Inference Endpoints handler of a HypeR retriever (ships in the model repository as handler.py).

JSON payloads:
- sentence similarity (the Hub widget's): {"inputs": {"source_sentence": str, "sentences": [str, ...]},
  "parameters": {"adapter": str}} -> [score, ...]: the source sentence is encoded as a query (with its hyper-prompt),
  each sentence as a passage (without prompt); the score is their dot product (the cosine for the L2-normalised
  dense models), a long passage's being that of its best window (MaxP). "parameters" is optional and takes only
  "adapter" here.
- feature extraction: {"inputs": str | [str, ...], "parameters": {"task": "query" | "document", "truncate": bool,
  "normalize": bool, "adapter": str}} -> one embedding (a list of floats) for a string, a list of them for a list;
  "task" defaults to "query", "truncate" to true (false: a text over what the model reads is an error), "normalize"
  to false (true: unit-length vectors).
"adapter" names a loaded hyper-prompt adapter for this request (default: the model's active one, which a request
never changes). It applies to the query side only (query embeddings, the source sentence); documents and passages
never use one, so their embeddings are the same whatever it names. The adapters loaded are the model's own
("default", if it has a hyper-prompt), every subfolder of <path>/adapters/ holding hyper_prompt_config.json (named
by the subfolder, in name order), and those given to EndpointHandler(adapters={name: folder}).
A malformed payload (not these forms, a blank or invalid-Unicode text, more than 256 texts or 100,000 characters in
one, an "adapter" that is not the name of a loaded one) is answered with {"error": message}, not an exception.

Work per request is bounded: at most 400,000 characters in all, and at most 32,768 tokens read in all: each text
counts what the model reads of it (a query up to the model's query length, a document up to its max_seq_length when
embedded, a passage whole when scored, MaxP). A text is cut to a bounded prefix before it is tokenized, so a long one
costs no more than what is read. Beyond the bound the answer is {"error": message, "status": 413}. The largest request
allowed costs MiniLM 6.75-12 s on 2 CPU cores, as measured: 6.75 s for 1 query + 54 passages of 602 tokens (`python
bench/handler.py --rounds 2`, README.md), about 12 s for long passages scored by their best window (issue 32's probe;
a passage's MaxP windows overlap by half, so the model computes up to about twice the tokens a passage counts, the
more so the longer the passage). The model card's bound is 15 s.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from transformers import AutoModel

TASKS = ("query", "document")
PARAMETERS = ("task", "truncate", "normalize", "adapter")  # truncate: true (default) cuts at max_seq_length,
# false refuses; adapter: a loaded adapter's name for the query side
SIMILARITY_PARAMETERS = ("adapter",)  # those the sentence-similarity form takes
ADAPTERS_DIR = "adapters"  # <path>/adapters/<name>/ holds an adapter loaded under <name>
ADAPTER_CONFIG = "hyper_prompt_config.json"  # what makes a subfolder of adapters/ an adapter
MAX_TEXTS = 256  # texts per request
MAX_CHARS = 100_000  # characters per text
MAX_REQUEST_CHARS = 400_000  # characters per request, all texts together
MAX_REQUEST_TOKENS = 32_768  # tokens read per request, all texts together
CHARS_PER_TOKEN_CUT = 16  # a text is tokenized from a prefix of this many characters per token read (if that
# prefix gives fewer tokens than are read, the whole text is)


class PayloadError(ValueError):
    """The request does not follow one of the payload forms above (status 400), or asks for more work than one
    request may (413)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


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


def _check_chars(texts: list[str]) -> None:
    """PayloadError (413) for a request over MAX_REQUEST_CHARS characters, before anything is tokenized."""
    if (total := sum(map(len, texts))) > MAX_REQUEST_CHARS:
        raise PayloadError(f"the request holds {total} characters; at most {MAX_REQUEST_CHARS} per request",
                           status=413)


def _check_tokens(tokens_read: list[int]) -> None:
    """PayloadError (413) for a request that reads over MAX_REQUEST_TOKENS tokens in all."""
    if (total := sum(tokens_read)) > MAX_REQUEST_TOKENS:
        raise PayloadError(f"the request reads {total} tokens; at most {MAX_REQUEST_TOKENS} per request (send fewer "
                           "or shorter texts)", status=413)


def _dense(matrix: Any) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)


class EndpointHandler:
    """Loads the repository's model once, and its adapters; each call answers one payload. The model computes one
    request at a time (an adapter is switched in for a request, then back)."""

    def __init__(self, path: str = "", adapters: Mapping[str, str] | None = None):
        """`path`: the model's folder; its adapters/ subfolders holding hyper_prompt_config.json are loaded under
        their names (in name order), then `adapters` ({name: folder}). A clash of names, or an adapter that does not
        fit the model's backbone, is the model's ValueError."""
        self.model = AutoModel.from_pretrained(path or ".", trust_remote_code=True).eval()
        self._lock = threading.RLock()
        folder = Path(path or ".") / ADAPTERS_DIR
        found = sorted(f for f in folder.iterdir() if (f / ADAPTER_CONFIG).is_file()) if folder.is_dir() else []
        for name, source in [*((f.name, str(f)) for f in found), *(adapters or {}).items()]:
            self.model.load_adapter(source, adapter_name=name)

    def __call__(self, data: dict[str, Any]) -> list | dict[str, str]:
        try:
            if not isinstance(data, dict) or "inputs" not in data:
                raise PayloadError('the payload must be a JSON object with an "inputs" key')
            parameters = data.get("parameters") or {}
            if not isinstance(parameters, dict) or set(parameters) - set(PARAMETERS):
                raise PayloadError(f'"parameters" must be an object with keys among {list(PARAMETERS)}')
            inputs = data["inputs"]
            if isinstance(inputs, dict):
                return self._similarity_payload(inputs, parameters)
            texts = _texts([inputs] if isinstance(inputs, str) else inputs, '"inputs"')
            adapter = self._requested_adapter(parameters)
            for key in ("truncate", "normalize"):
                if not isinstance(parameters.get(key, False), bool):
                    raise PayloadError(f'"{key}" must be true or false, got {parameters[key]!r}')
            task = parameters.get("task", "query")
            if task not in TASKS:
                raise PayloadError(f'"task" must be one of {list(TASKS)}, got {task!r}')
            _check_chars(texts)
            limit = self._limit(task)
            read, lengths = self._token_counts(texts, limit)
            if parameters.get("truncate", True) is False:
                self._check_lengths(lengths, limit)
            _check_tokens([min(n, limit) for n in lengths])
            vectors = self.embed(read, task, adapter=adapter)
            if parameters.get("normalize", False):
                vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
            return vectors[0].tolist() if isinstance(inputs, str) else vectors.tolist()
        except PayloadError as e:
            return {"error": str(e)} if e.status == 400 else {"error": str(e), "status": e.status}

    def _similarity_payload(self, inputs: dict[str, Any], parameters: dict[str, Any]) -> list[float]:
        expected = {"source_sentence", "sentences"}
        if set(inputs) != expected:
            raise PayloadError(f'"inputs" as an object needs exactly the keys {sorted(expected)}, got {sorted(inputs)}')
        if extra := sorted(set(parameters) - set(SIMILARITY_PARAMETERS)):
            raise PayloadError(f'"parameters" of the sentence-similarity form (an "inputs" object) takes only '
                               f'{list(SIMILARITY_PARAMETERS)}, got {extra}')
        adapter = self._requested_adapter(parameters)
        source = _text(inputs["source_sentence"], '"source_sentence"')
        sentences = _texts(inputs["sentences"], '"sentences"')
        _check_chars([source, *sentences])
        (source,), (query_tokens,) = self._token_counts([source], self._limit("query"))
        _, passage_tokens = self._token_counts(sentences, None)  # read whole (MaxP)
        _check_tokens([min(query_tokens, self._limit("query")), *passage_tokens])
        return self.similarity(source, sentences, adapter=adapter)

    def _requested_adapter(self, parameters: dict[str, Any]) -> str | None:
        """The payload's "adapter": absent, None (the active one); present, a loaded adapter's name, else
        PayloadError (null included)."""
        if "adapter" not in parameters:
            return None
        return self._adapter_name(parameters["adapter"], allow_none=False)

    def _adapter_name(self, adapter: Any, allow_none: bool = True) -> str | None:
        """`adapter` if it names a loaded adapter (None, where allowed: the active one), else PayloadError naming
        those loaded."""
        if adapter is None and allow_none:
            return None
        if not isinstance(adapter, str):
            raise PayloadError(f'"adapter" must be a string naming a loaded adapter, got {adapter!r}')
        with self._lock:
            loaded = self.model.adapter_names
        if adapter not in loaded:
            raise PayloadError(f'"adapter": unknown adapter {adapter!r}; loaded: {loaded}')
        return adapter

    @contextlib.contextmanager
    def _query_side(self, adapter: str | None) -> Iterator[None]:
        """The model to itself, with `adapter` (validated; None: the active one) switched in, and back after."""
        adapter = self._adapter_name(adapter)
        with self._lock, (self.model.using_adapter(adapter) if adapter is not None else contextlib.nullcontext()):
            yield

    def adapters(self) -> dict[str, Any]:
        """{"adapters": the loaded adapters' names, "active": the one used without "adapter" (None: no prompt)}."""
        with self._lock:
            return {"adapters": self.model.adapter_names, "active": self.model.active_adapter}

    def _limit(self, task: str) -> int:
        config = self.model.config
        return getattr(config, "query_length", config.max_seq_length) if task == "query" else config.max_seq_length

    def _token_counts(self, texts: list[str], limit: int | None) -> tuple[list[str], list[int]]:
        """(the texts to encode, the tokens of each, special tokens included). With ``limit`` (the tokens read),
        each text is tokenized from a prefix of CHARS_PER_TOKEN_CUT characters per token read, and a prefix that
        already gives well over ``limit`` tokens replaces the text (its first ``limit`` tokens are the text's); a
        count above ``limit`` means "longer than read". Without, the whole texts are counted."""
        if limit is None:
            return texts, [len(ids) for ids in self.model.tokenizer(texts, verbose=False)["input_ids"]]
        cut = CHARS_PER_TOKEN_CUT * (limit + 1)
        prefixes = [t[:cut] for t in texts]
        counts = [len(ids) for ids in self.model.tokenizer(prefixes, verbose=False)["input_ids"]]
        margin = limit + 16  # the word cut in two sits far past the tokens read
        kept = [p if n > margin else t for p, t, n in zip(prefixes, texts, counts, strict=True)]
        for i, (text, n) in enumerate(zip(texts, counts, strict=True)):
            if len(text) > cut and n <= margin:  # a prefix of very long words: count the whole text
                counts[i] = len(self.model.tokenizer(text, verbose=False)["input_ids"])
        return kept, counts

    def _check_lengths(self, lengths: list[int], limit: int) -> None:
        """With "truncate": false, a text longer than the model reads (a query: the config's query length) is an
        error rather than cut."""
        for i, n in enumerate(lengths):
            if n > limit:
                raise PayloadError(f'"inputs"[{i}] has {n} tokens, over the {limit} the model reads '
                                   '(send "truncate": true to cut it)')

    def embed(self, texts: list[str], task: str = "query", adapter: str | None = None) -> np.ndarray:
        """(n, d) embeddings (dense arrays also for the sparse kind): queries with the prompt (that of `adapter`, a
        loaded adapter's name; None: the active one), documents without (whatever `adapter` names)."""
        if task not in TASKS:
            raise PayloadError(f'"task" must be one of {list(TASKS)}, got {task!r}')
        adapter = self._adapter_name(adapter)  # checked for documents too, which never use one
        with self._query_side(adapter if task == "query" else None):
            encode = self.model.encode_queries if task == "query" else self.model.encode_corpus
            return _dense(encode(texts))

    def similarity(self, source: str, sentences: list[str], adapter: str | None = None) -> list[float]:
        """Dot products of the source (a query, with `adapter`'s prompt; None: the active one) with each sentence (a
        passage, without prompt); a passage longer than the model's max_seq_length scores its best window (MaxP),
        so it is read whole."""
        with self._query_side(adapter):
            return self.model.score_passages(source, sentences, windows="max").tolist()

    def prompt_attention(self, query: str, adapter: str | None = None) -> list[float] | None:
        """The query's attention over the prompt pool of `adapter` (None: the active one) (N weights summing to 1),
        None for a model without a pool."""
        with self._query_side(adapter):
            if self.model.hyper_prompt is None:
                return None
            return self.model.prompt_attention([query])[0].tolist()
