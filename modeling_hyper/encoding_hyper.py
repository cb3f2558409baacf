"""The inference engine of a HypeR retriever: texts -> token stores -> length-sorted batches -> vectors.

HyperRetrieverModel inherits these methods; the network itself (forward, save/load, adapter) is in modeling_hyper.py.
A token store is a flat array of token ids (total tokens,) int32 and offsets (n + 1,) int64: text i is
ids[offsets[i]:offsets[i + 1]]. Batches are sorted by token count, so they carry little padding; on a GPU they are
padded ahead in a thread and copied asynchronously. Shapes: n texts, d hidden size, V vocabulary, N prompts.
"""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

TOKENIZE_CHUNK = 4096  # texts per tokenizer call in `tokenize`


def prefetch(batches: Iterator, depth: int = 8) -> Iterator:
    """Runs the `batches` generator in a background thread, `depth` items ahead (the fast tokenizer releases the
    GIL, so tokenizing overlaps with the GPU); an exception in the thread is raised here."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for item in batches:
                box.put(item)
        except BaseException as e:  # handed to the consumer
            box.put(e)
        box.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := box.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def passage_text(doc: dict) -> str:
    """How a passage {"title", "text"} is read as one text: title and text joined by a space (BEIR's convention)."""
    return f"{doc.get('title') or ''} {doc['text']}".strip()


class HyperEncodingMixin:
    """BEIR-style encoding (encode_queries / encode_corpus), MaxP windows and token stores, for a model with
    ``config`` (HyperConfig), ``tokenizer``, ``hyper_prompt``, ``query_encoder``, ``using_adapter`` and a forward
    taking (input_ids, attention_mask, is_query)."""

    def encode_queries(
        self,
        queries: list[str],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        return_prompt_attention: bool = False,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
        adapter: str | None = None,
        task: str | list[str] | None = None,
    ):
        """Queries -> (n, d) float32 array (dense) or (n, V) scipy CSR matrix (sparse), with the prompt prefix; with
        `return_prompt_attention`, the pair (vectors, (n, N) attention over the pool or None), from one pass.
        `convert_to_tensor` gives a torch tensor (sparse: a CSR tensor), `normalize_embeddings` unit-length rows;
        `adapter` a loaded adapter's name for this call (default: the active one, see `set_adapter`); `task` the task
        of the queries (one name, or one per query) for a pool routed by task (synthesizer='task'), which the other
        pools ignore; any other keyword is an error.

        An empty list gives an empty (0, dim) result; an empty or blank query is an error; queries longer than
        `config.query_length` tokens (max_query_length, else max_seq_length) are truncated.
        """
        for i, query in enumerate(self._check_texts(queries, "queries")):
            if not query.strip():
                raise ValueError(f"queries[{i}] is empty: an empty query has nothing to retrieve with")
        with self.using_adapter(adapter) if adapter is not None else contextlib.nullcontext():
            task_ids = self._task_ids(task, queries)
            vectors, attention = self._encode(queries, True, batch_size, show_progress_bar, task_ids)
        vectors = self._finish(vectors, convert_to_tensor, normalize_embeddings)
        return (vectors, attention) if return_prompt_attention else vectors

    def encode_corpus(
        self, corpus: list[dict] | list[str], batch_size: int = 32, show_progress_bar: bool = False,
        convert_to_tensor: bool = False, normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Passages ({"title", "text"} dicts or strings) -> (n, d) or (n, V) CSR, without prompt; the keywords as
        in `encode_queries`.

        A title is joined to its text with a space (BEIR's convention); an empty passage is encoded as is.
        """
        vectors = self._encode(self.passage_texts(corpus), False, batch_size, show_progress_bar)[0]
        return self._finish(vectors, convert_to_tensor, normalize_embeddings)

    @staticmethod
    def _finish(vectors, convert_to_tensor: bool, normalize: bool):
        """Encoded vectors (array or CSR), scaled to unit length if asked, as a torch tensor if asked."""
        sparse = hasattr(vectors, "tocsr")
        if normalize:
            norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).reshape(-1)) if sparse else (
                np.linalg.norm(vectors, axis=1))
            scale = 1.0 / np.maximum(norms, 1e-12)
            vectors = vectors.multiply(scale[:, None]).tocsr() if sparse else vectors * scale[:, None]
        if not convert_to_tensor:
            return vectors
        if sparse:
            return torch.sparse_csr_tensor(vectors.indptr, vectors.indices, vectors.data, size=vectors.shape)
        return torch.from_numpy(np.ascontiguousarray(vectors))

    def passage_texts(self, corpus: list[dict] | list[str]) -> list[str]:
        """What `encode_corpus` encodes: a dict's title and text joined by a space, or the string itself."""
        texts = []
        for i, doc in enumerate(self._check_texts(corpus, "corpus", allow_dicts=True)):
            if isinstance(doc, dict):
                if "text" not in doc:
                    raise ValueError(f"corpus[{i}] has no 'text' key (keys: {sorted(doc)})")
                doc = passage_text(doc)
            texts.append(doc)
        return texts

    def score_passages(
        self, query: str, passages: list[dict] | list[str], windows: str = "max", stride: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """The query's score (dot product) of each passage, (n,) float32. With windows="max" (MaxP) a passage
        longer than `config.max_seq_length` tokens is read in overlapping windows (see `tokenize_windows`) and
        scores its best one; windows="first" reads its first window only, as `encode_corpus` does."""
        if windows not in ("first", "max"):
            raise ValueError(f"windows={windows!r}: expected 'first' or 'max'")
        query_vector = self.encode_queries([query])
        ids, offsets, doc = self.tokenize_windows(passages, stride=stride, first_only=windows == "first")
        window_vectors = self.encode_tokenized(ids, offsets, False, batch_size)[0]
        window_scores = np.asarray((window_vectors @ query_vector.T).todense() if self.config.representation ==
                                   "sparse" else window_vectors @ query_vector.T, dtype=np.float32).reshape(-1)
        scores = np.full(len(passages), -np.inf, dtype=np.float32)
        np.maximum.at(scores, doc, window_scores)
        return scores

    def prompt_attention(self, queries: list[str], batch_size: int = 32, show_progress_bar: bool = False,
                         adapter: str | None = None, task: str | list[str] | None = None) -> np.ndarray:
        """Queries -> (n, N) attention over the prompt pool: which prompts each query mixed (with the active adapter,
        or the one named; `task` as in `encode_queries`)."""
        with self.using_adapter(adapter) if adapter is not None else contextlib.nullcontext():
            if self.hyper_prompt is None:
                raise ValueError("this model has no prompt pool (config.hyper_prompt is None)")
            self._check_texts(queries, "queries")
            return self._encode(queries, True, batch_size, show_progress_bar, self._task_ids(task, queries))[1]

    @torch.no_grad()
    def calibrate_synthesizer(self, queries: list[str], batch_size: int = 256) -> int:
        """Sets the prompt synthesizer's running statistics (standardized and cosine forms) to their exact values over
        `queries` (e.g. a sample of the training queries; train.py does this before each evaluation and the final
        save). Returns the number of queries used (0 for a synthesizer without statistics)."""
        synthesizer = self.hyper_prompt.synthesizer if self.hyper_prompt is not None else None
        if synthesizer is None or not queries:
            return 0
        embed = self.query_encoder.get_input_embeddings()
        ids, offsets = self.tokenize(self._check_texts(queries, "queries"), self.config.query_length)
        batches = self._store_batches(ids, offsets, batch_size)
        return synthesizer.calibrate(
            (embed(ids.to(self.device)), mask.to(self.device)) for _, ids, mask in batches
        )

    def _task_ids(self, task: str | list[str] | None, queries: list[str]) -> np.ndarray | None:
        """(n,) the prompt of each query's task for a pool routed by task (-1: not one of its tasks); None for the
        other models or without tasks."""
        if task is None or self.hyper_prompt is None or self.hyper_prompt.config.synthesizer != "task":
            return None
        names = self.hyper_prompt.config.task_names
        tasks = [task] * len(queries) if isinstance(task, str) else list(task)
        if len(tasks) != len(queries):
            raise ValueError(f"task: {len(tasks)} task names for {len(queries)} queries; give one, or one per query")
        index = {name: i for i, name in enumerate(names)}
        return np.array([index.get(t, -1) for t in tasks], dtype=np.int64)

    @staticmethod
    def _check_texts(texts, what: str, allow_dicts: bool = False) -> list:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"{what} must be a list of {'dicts or ' if allow_dicts else ''}strings, got {type(texts)}")
        allowed = (str, dict) if allow_dicts else (str,)
        for i, text in enumerate(texts):
            if not isinstance(text, allowed):
                expected = " or ".join(a.__name__ for a in allowed)
                raise TypeError(f"{what}[{i}] is a {type(text).__name__}, expected {expected}")
        return list(texts)

    def tokenize(self, texts: list[str], max_length: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> a flat token store: ids (total tokens,) int32 and offsets (n + 1,) int64; text i is
        ids[offsets[i]:offsets[i + 1]], truncated at `max_length` (default `config.max_seq_length`). Tokenized in
        chunks of TOKENIZE_CHUNK texts per call (the fast tokenizer works in parallel within a call)."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: load with from_pretrained/from_backbone or set model.tokenizer")
        ids, lengths = [], []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = self.tokenizer(
                texts[start : start + TOKENIZE_CHUNK],
                truncation=True,
                max_length=max_length or self.config.max_seq_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            lengths.append(np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk)))
            ids.append(np.fromiter(itertools.chain.from_iterable(chunk), dtype=np.int32, count=int(lengths[-1].sum())))
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)
        return (np.concatenate(ids) if ids else np.zeros(0, np.int32)), offsets.astype(np.int64)

    def max_window_length(self) -> int:
        """The most tokens one text (a passage window) may hold: the backbone's position table."""
        limit = self.config.backbone_config.max_position_embeddings
        if self.config.backbone_config.model_type in ("roberta", "xlm-roberta", "camembert"):
            limit -= self.config.backbone_config.pad_token_id + 1  # their positions start after the padding index
        return limit

    def tokenize_windows(
        self, corpus: list[dict] | list[str], window_length: int | None = None, stride: int | None = None,
        first_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Passages -> a token store of overlapping windows (MaxP): ids (total tokens,) int32, offsets
        (n_windows + 1,) int64 as in `tokenize`, and doc (n_windows,) int64, the passage row of each window
        (non-decreasing: a passage's windows are consecutive, first window first).

        Each window is the special tokens around the title's tokens (repeated in every window) and a slice of the
        text's tokens; `window_length` (default `config.max_seq_length`) counts them all and may not exceed
        `max_window_length()`. Window starts advance by `stride` text tokens (default half the window; never
        more than the room a window has, so every token is in some window). A passage that fits is one window,
        and `first_only` keeps only first windows (FirstP: the truncation `tokenize` does).
        """
        if self.tokenizer is None:
            raise ValueError("no tokenizer: load with from_pretrained/from_backbone or set model.tokenizer")
        length = window_length or self.config.max_seq_length
        if length > self.max_window_length():
            raise ValueError(f"window_length={length} exceeds the backbone's limit of {self.max_window_length()} "
                             f"positions ({self.config.backbone_config.model_type}); use at most that")
        probe = self.tokenizer("hello")["input_ids"]
        bare = self.tokenizer("hello", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(probe)) if probe[i : i + len(bare)] == bare)
        head, tail = probe[:start], probe[start + len(bare) :]
        room_total = length - len(head) - len(tail)  # title + text tokens per window
        stride = stride or max(1, room_total // 2)
        if stride < 1 or stride > room_total:
            raise ValueError(f"stride={stride}: expected 1..{room_total} (the tokens a window of {length} holds)")
        documents = [d if isinstance(d, dict) else {"text": d} for d in self._check_texts(corpus, "corpus", True)]
        for i, doc in enumerate(documents):
            if "text" not in doc:
                raise ValueError(f"corpus[{i}] has no 'text' key (keys: {sorted(doc)})")
        ids, lengths, docs = [], [], []
        for begin in range(0, len(documents), TOKENIZE_CHUNK):
            chunk = documents[begin : begin + TOKENIZE_CHUNK]
            titles, texts = (self.tokenizer([d.get(key) or "" for d in chunk], add_special_tokens=False,
                                            verbose=False)["input_ids"] for key in ("title", "text"))
            windows = []
            for row, (title, text) in enumerate(zip(titles, texts, strict=True), start=begin):
                title = title[: room_total // 2]  # a title never takes more than half a window
                room = room_total - len(title)
                step = min(stride, room)
                count = 1 if first_only else 1 + max(0, -(-(len(text) - room) // step))
                windows += [head + title + text[w * step : w * step + room] + tail for w in range(count)]
                docs.append(np.full(count, row, dtype=np.int64))
            lengths.append(np.fromiter(map(len, windows), dtype=np.int64, count=len(windows)))
            ids.append(np.fromiter(itertools.chain.from_iterable(windows), np.int32, int(lengths[-1].sum())))
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)
        return (np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets.astype(np.int64),
                np.concatenate(docs) if docs else np.zeros(0, np.int64))

    def _store_batches(self, ids: np.ndarray, offsets: np.ndarray, batch_size: int) -> Iterator:
        """Yields (rows, input ids (B, T), attention mask (B, T)) over a token store, longest first, padded per batch:
        sorted by token count, batches carry little padding."""
        lengths = np.diff(offsets)
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            mask = np.arange(lengths[rows[0]])[None, :] < lengths[rows][:, None]
            input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
            input_ids[mask] = np.concatenate([ids[offsets[r] : offsets[r + 1]] for r in rows])
            yield rows, torch.from_numpy(input_ids), torch.from_numpy(mask.astype(np.int64))

    def _encode(self, texts: list[str], is_query: bool, batch_size: int, show_progress_bar: bool,
                task_ids: np.ndarray | None = None):
        """Texts -> (embeddings in input order, prompt attention or None); queries cut at config.query_length."""
        ids, offsets = self.tokenize(texts, self.config.query_length if is_query else None)
        return self.encode_tokenized(ids, offsets, is_query, batch_size, show_progress_bar, task_ids)

    @torch.no_grad()
    def encode_tokenized(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        is_query: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool = False,
        task_ids: np.ndarray | None = None,
    ):
        """A token store (see `tokenize`; e.g. a cached, memory-mapped one) -> (embeddings (n, d) or CSR (n, V) in
        row order, prompt attention (n, N) or None). Token-length-sorted batches, no grad. `task_ids` (n,): each
        row's task, for a pool routed by task."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        was_training = self.training
        self.eval()
        sparse = self.config.representation == "sparse"
        if sparse:
            from scipy import sparse as scipy_sparse
        rows, embeddings, attentions = [], [], []
        bar = None
        if show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(offsets) - 1, desc="queries" if is_query else "passages", unit="text")
        on_gpu = self.device.type == "cuda"
        batches = self._store_batches(ids, offsets, batch_size)
        for batch_rows, input_ids, mask in prefetch(batches) if on_gpu else batches:
            if on_gpu:  # batches are padded ahead in a thread; copies overlap with compute
                input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
            out = self(
                input_ids.to(self.device, non_blocking=on_gpu),
                mask.to(self.device, non_blocking=on_gpu),
                is_query=is_query,
                task_ids=torch.from_numpy(task_ids[batch_rows]).to(self.device) if task_ids is not None else None,
            )
            # Dense vectors stay on the device until the end (one copy back); sparse ones become CSR at once.
            emb = out.embeddings.float()
            embeddings.append(scipy_sparse.csr_matrix(emb.cpu().numpy()) if sparse else emb)
            if out.prompt_attention is not None:
                attentions.append(out.prompt_attention.float())
            rows.append(batch_rows)
            if bar is not None:
                bar.update(len(batch_rows))
        if bar is not None:
            bar.close()
        self.train(was_training)
        if not embeddings:
            empty = np.zeros((0, self._output_dim()), dtype=np.float32)
            no_attention = None
            if is_query and self.hyper_prompt is not None:
                no_attention = np.zeros((0, self.hyper_prompt.config.pool_size), dtype=np.float32)
            return (scipy_sparse.csr_matrix(empty) if sparse else empty), no_attention
        inverse = np.argsort(np.concatenate(rows), kind="stable")
        stacked = scipy_sparse.vstack(embeddings, format="csr") if sparse else torch.cat(embeddings).cpu().numpy()
        return stacked[inverse], (torch.cat(attentions).cpu().numpy()[inverse] if attentions else None)

    def _output_dim(self) -> int:
        backbone = self.config.backbone_config
        return backbone.vocab_size if self.config.representation == "sparse" else backbone.hidden_size
