"""Turning sampled example indices into tokenized training batches.

A batch of B queries carries, for each query, one gold passage and `num_negatives` hard negatives, laid out back to
back: passages (B * (1 + k), T_p), and query b's target is passage b * (1 + k). Every other passage of the (global)
batch is an in-batch negative, except other copies of b's gold passages, which `exclude` drops from b's softmax.

Everything a batch needs from the host (token ids, the passages' rows in the passage table, the ids the false-negative
mask compares) is built here, where a prefetching thread can do it while the device computes the previous step.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from hyper_retrieval.core.fingerprints import content_key, tokenizer_fingerprint
from hyper_retrieval.data.beir import Collection, document_key
from hyper_retrieval.search.cache import cached_arrays
from hyper_retrieval.training.examples import Example, key_ids, positive_key_ids, sample_passages
from modeling_hyper.encoding_hyper import passage_text


@dataclass
class TaskData:
    """One task's training examples and the corpora their passages come from (by collection name)."""

    name: str
    examples: list[Example]
    collections: dict[str, Collection]


@dataclass
class TrainBatch:
    """Tokenized queries (B, T_q) and passages (B * (1 + k), T_p), or the passages' rows of a PassageTable, plus what
    the losses need. Tensors only beside `passage_keys`, so that the whole batch moves to the device in one `to`."""

    queries: dict[str, torch.Tensor]
    passages: dict[str, torch.Tensor]  # empty when the passages are looked up
    targets: torch.Tensor  # (B,) index of each query's gold among the local passages
    tasks: torch.Tensor  # (B,) task id
    positive_ids: torch.Tensor  # (B, G) key ids of each query's gold passages, -1 padded (examples.positive_key_ids)
    passage_ids: torch.Tensor  # (B * (1 + k),) key ids of the local passages (examples.key_ids)
    passage_keys: list[str] = field(default_factory=list)  # "<collection>/<doc id>" of each local passage
    passage_rows: torch.Tensor | None = None  # (B * (1 + k), W) int64 rows of the passages in a PassageTable
    window_mask: torch.Tensor | None = None  # (B * (1 + k), W) the real windows of looked-up passages, or None

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> TrainBatch:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                setattr(self, f.name, move(value))
            elif isinstance(value, dict):
                setattr(self, f.name, {k: move(v) for k, v in value.items()})
        return self

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TrainBatch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> TrainBatch:
        """Page-locked host memory, so that `to(cuda, non_blocking=True)` copies while the device computes."""
        return self._map(torch.Tensor.pin_memory)


class TokenizedTexts:
    """Texts tokenized once (truncated to `max_length`), batched on demand exactly as
    ``tokenizer(texts, padding=True, truncation=True, max_length=max_length)`` would: the ids live in one int32
    array, so a million training queries cost a few megabytes, not a million Python lists. With a `cache_dir` (the
    embedding cache) they are kept there as a token store keyed by the tokenizer, the texts and `max_length`, so that
    a run started again, or another run on the same data, skips tokenizing."""

    def __init__(self, tokenizer, texts: Sequence[str], max_length: int, chunk: int = 8192,
                 cache_dir: str | os.PathLike | None = None) -> None:
        def tokenize() -> dict[str, np.ndarray]:
            ids = []
            for start in range(0, len(texts), chunk):
                ids += tokenizer(list(texts[start : start + chunk]), truncation=True, max_length=max_length,
                                 return_attention_mask=False, return_token_type_ids=False)["input_ids"]
            offsets = np.concatenate([[0], np.cumsum([len(row) for row in ids])]).astype(np.int64)
            return {"ids": np.fromiter((t for row in ids for t in row), dtype=np.int32, count=int(offsets[-1])),
                    "offsets": offsets}

        parts = {"tokenizer": tokenizer_fingerprint(tokenizer), "texts": content_key(list(texts)),
                 "n_texts": len(texts), "max_length": max_length}
        store = cached_arrays(cache_dir, parts, tokenize)[0] if cache_dir else tokenize()
        self.ids, self.starts = store["ids"], store["offsets"]
        self.lengths = np.diff(self.starts)
        self.pad_id = tokenizer.pad_token_id
        self.left = tokenizer.padding_side == "left"
        self.names = tokenizer.model_input_names

    def __len__(self) -> int:
        return len(self.lengths)

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """input_ids and attention_mask (B, T) padded to the longest of `rows` (token_type_ids zeros where the
        tokenizer returns them)."""
        width = int(self.lengths[list(rows)].max())
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for b, row in enumerate(rows):
            n = int(self.lengths[row])
            columns = slice(width - n, width) if self.left else slice(0, n)
            input_ids[b, columns] = self.ids[self.starts[row] : self.starts[row] + n]
            mask[b, columns] = 1
        out = {"input_ids": torch.from_numpy(input_ids)}
        if "token_type_ids" in self.names:
            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        if "attention_mask" in self.names:
            out["attention_mask"] = torch.from_numpy(mask)
        return {name: out[name] for name in self.names if name in out}


PassageRows = Callable[[Sequence[str]], tuple[torch.Tensor, torch.Tensor | None]]


class BatchBuilder:
    """flat example indices (from MultiTaskBatchSampler) + the step -> TrainBatch; deterministic given the step.

    The training queries are tokenized once, here (or read from `cache_dir`, the embedding cache). ``passage_rows``
    (a PassageTable's `rows`) gives the passages' table rows instead of their tokens, for a frozen passage encoder
    (the step gathers their vectors on the device).
    """

    def __init__(self, tasks: Sequence[TaskData], tokenizer, num_negatives: int, max_query_length: int,
                 max_passage_length: int, seed: int, passage_rows: PassageRows | None = None,
                 cache_dir: str | os.PathLike | None = None) -> None:
        self.tasks = list(tasks)
        self.offsets = np.cumsum([0, *(len(t.examples) for t in self.tasks)])
        self.tokenizer = tokenizer
        self.num_negatives = num_negatives
        self.max_passage_length = max_passage_length
        self.seed = seed
        self.passage_rows = passage_rows
        self.queries = TokenizedTexts(tokenizer, [ex.query for t in self.tasks for ex in t.examples],
                                      max_query_length, cache_dir=cache_dir)
        self._corpus_ids = {name: c.corpus.ids for t in self.tasks for name, c in t.collections.items()}

    def example(self, flat_index: int) -> tuple[int, Example]:
        task = int(np.searchsorted(self.offsets, flat_index, side="right") - 1)
        return task, self.tasks[task].examples[flat_index - self.offsets[task]]

    def __call__(self, flat_indices: Sequence[int], step: int, rank: int = 0) -> TrainBatch:
        rng = np.random.default_rng([self.seed, step, rank])
        passages, keys, positives, task_ids = [], [], [], []
        for flat in flat_indices:
            task, ex = self.example(flat)
            chosen = sample_passages(ex, self.num_negatives, rng, self._corpus_ids[ex.collection])
            if self.passage_rows is None:
                corpus = self.tasks[task].collections[ex.collection].corpus
                passages += [passage_text(doc) for doc in corpus.get_many(chosen)]
            keys += [document_key(ex.collection, d) for d in chosen]
            positives.append({document_key(ex.collection, d) for d in ex.positive_ids})
            task_ids.append(task)
        rows, window_mask = self.passage_rows(keys) if self.passage_rows is not None else (None, None)
        group = 1 + self.num_negatives
        return TrainBatch(
            queries=self.queries.batch(flat_indices),
            passages={} if self.passage_rows is not None else dict(self.tokenizer(
                passages, padding=True, truncation=True, max_length=self.max_passage_length, return_tensors="pt")),
            targets=torch.arange(len(flat_indices)) * group,
            tasks=torch.tensor(task_ids),
            positive_ids=positive_key_ids(positives),
            passage_ids=key_ids(keys),
            passage_keys=keys,
            passage_rows=rows,
            window_mask=window_mask,
        )
