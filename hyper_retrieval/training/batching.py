"""Turning sampled example indices into tokenized training batches.

A batch of B queries carries, for each query, one gold passage and `num_negatives` hard negatives, laid out back to
back: passages (B * (1 + k), T_p), and query b's target is passage b * (1 + k). Every other passage of the (global)
batch is an in-batch negative, except other copies of b's gold passages, which `exclude` drops from b's softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hyper_retrieval.data.beir import Collection, document_key
from hyper_retrieval.training.examples import Example, sample_passages
from modeling_hyper.encoding_hyper import passage_text


@dataclass
class TaskData:
    """One task's training examples and the corpora their passages come from (by collection name)."""

    name: str
    examples: list[Example]
    collections: dict[str, Collection]


@dataclass
class TrainBatch:
    """Tokenized queries (B, T_q) and passages (B * (1 + k), T_p) plus what the losses need."""

    queries: dict[str, torch.Tensor]
    passages: dict[str, torch.Tensor]
    targets: torch.Tensor  # (B,) index of each query's gold among the local passages
    tasks: torch.Tensor  # (B,) task id
    positives: list[set[str]]  # per query, "<collection>/<doc id>" keys of every gold passage
    passage_keys: list[str]  # "<collection>/<doc id>" of each local passage

    def to(self, device: torch.device) -> TrainBatch:
        self.queries = {k: v.to(device) for k, v in self.queries.items()}
        self.passages = {k: v.to(device) for k, v in self.passages.items()}
        self.targets, self.tasks = self.targets.to(device), self.tasks.to(device)
        return self


class BatchBuilder:
    """flat example indices (from MultiTaskBatchSampler) + the step -> TrainBatch; deterministic given the step."""

    def __init__(self, tasks: Sequence[TaskData], tokenizer, num_negatives: int, max_query_length: int,
                 max_passage_length: int, seed: int, tokenize_passages: bool = True) -> None:
        """``tokenize_passages=False`` leaves ``TrainBatch.passages`` empty (passages looked up, not encoded)."""
        self.tasks = list(tasks)
        self.offsets = np.cumsum([0, *(len(t.examples) for t in self.tasks)])
        self.tokenizer = tokenizer
        self.num_negatives = num_negatives
        self.max_query_length, self.max_passage_length = max_query_length, max_passage_length
        self.seed = seed
        self.tokenize_passages = tokenize_passages
        self._corpus_ids = {name: c.corpus.ids for t in self.tasks for name, c in t.collections.items()}

    def example(self, flat_index: int) -> tuple[int, Example]:
        task = int(np.searchsorted(self.offsets, flat_index, side="right") - 1)
        return task, self.tasks[task].examples[flat_index - self.offsets[task]]

    def __call__(self, flat_indices: Sequence[int], step: int, rank: int = 0) -> TrainBatch:
        rng = np.random.default_rng([self.seed, step, rank])
        queries, passages, keys, positives, task_ids = [], [], [], [], []
        for flat in flat_indices:
            task, ex = self.example(flat)
            chosen = sample_passages(ex, self.num_negatives, rng, self._corpus_ids[ex.collection])
            queries.append(ex.query)
            if self.tokenize_passages:
                corpus = self.tasks[task].collections[ex.collection].corpus
                passages += [passage_text(doc) for doc in corpus.get_many(chosen)]
            keys += [document_key(ex.collection, d) for d in chosen]
            positives.append({document_key(ex.collection, d) for d in ex.positive_ids})
            task_ids.append(task)
        group = 1 + self.num_negatives
        return TrainBatch(
            queries=self._tokenize(queries, self.max_query_length),
            passages=self._tokenize(passages, self.max_passage_length) if self.tokenize_passages else {},
            targets=torch.arange(len(queries)) * group,
            tasks=torch.tensor(task_ids),
            positives=positives,
            passage_keys=keys,
        )

    def _tokenize(self, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
        return dict(self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"))
