"""Training examples: (query, gold passage ids, hard negative ids, task), and the passages a step trains on.

Bad data is never dropped silently:
- a qrel naming a document (or query) that does not exist: `beir.load_collection` raises DataError naming the
  qrels file and the ids;
- a judged query without any positive judgement (every score <= 0): skipped, with a warning naming the qrels
  file, the count and the first ids (BEIR qrels may hold explicit non-relevant judgements; such a query has
  nothing to train on);
- a split where no query is left, or negatives naming an unknown document or missing a query: DataError.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hyper_retrieval.data.beir import Collection, DataError, load_collection
from hyper_retrieval.training.config import CollectionSettings, DataSettings
from hyper_retrieval.training.negatives import BM25Settings, bm25_negatives, model_negatives

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One training query: its text, gold doc ids, hard negative doc ids (best first), task and collection name."""

    query_id: str
    query: str
    positive_ids: tuple[str, ...]
    negative_ids: tuple[str, ...]
    task: str
    collection: str


def build_examples(collection: Collection, task: str, negatives: Mapping[str, Sequence[str]] | None,
                   source: str) -> list[Example]:
    """Examples for every judged query of `collection` with a positive judgement (score > 0).

    `negatives` maps query id -> doc ids (None: no hard negatives); `source` (the qrels file) names the data in
    warnings and errors.
    """
    examples = []
    no_positive = []
    for qid, judged in collection.qrels.items():
        positives = tuple(d for d, score in judged.items() if score > 0)
        if not positives:
            no_positive.append(qid)
            continue
        if negatives is not None and qid not in negatives:
            raise DataError(f"{source}: query {qid!r} has no entry in the hard negatives (stale cache?)")
        hard = tuple(negatives[qid]) if negatives is not None else ()
        examples.append(Example(qid, collection.queries[qid], positives, hard, task, collection.name))
    if no_positive:
        logger.warning("%s: skipped %d judged query(ies) with no positive judgement (score > 0), e.g. %s",
                       source, len(no_positive), no_positive[:5])
    if not examples:
        raise DataError(f"{source}: no query with a positive judgement: nothing to train on")
    if negatives is not None:
        _check_known(collection, {d for ex in examples for d in ex.negative_ids}, source)
    return examples


def _check_known(collection: Collection, doc_ids: set[str], source: str) -> None:
    """Raise DataError naming the first hard-negative id that is not in the corpus."""
    try:
        collection.corpus.rows_of(sorted(doc_ids))
    except KeyError as err:
        raise DataError(f"{source}: hard negative {err.args[0]!r} is not in the corpus of {collection.name}") from None


def first_queries(collection: Collection, n: int) -> Collection:
    """The same collection restricted to its first `n` judged queries with a positive (qrels file order)."""
    kept = [q for q, judged in collection.qrels.items() if any(s > 0 for s in judged.values())][:n]
    return Collection(collection.name, collection.corpus, {q: collection.queries[q] for q in kept},
                      {q: collection.qrels[q] for q in kept})


def load_task_examples(settings: CollectionSettings, data: DataSettings, model: Any = None,
                       model_key: str = "") -> tuple[Collection, list[Example]]:
    """Load one configured collection's training split and its examples, with hard negatives per `data.negatives`.

    bm25: mined (or read from `data.negatives_cache_dir`); none: no hard negatives; dense: mined with `model`
    (BEIR's encode interface; dense or sparse), cached under `model_key`. `settings.max_queries` keeps the first
    n queries before mining.
    """
    source = str(Path(settings.path) / "qrels" / f"{data.train_split}.tsv")
    collection = load_collection(settings.path, data.train_split)
    if settings.max_queries is not None:
        collection = first_queries(collection, settings.max_queries)
    if data.negatives == "bm25":
        bm25 = BM25Settings(k1=data.bm25_k1, b=data.bm25_b, depth=data.negatives_depth)
        negatives = bm25_negatives(collection, data.negatives_cache_dir, bm25)
    elif data.negatives == "none":
        negatives = None
    elif model is None:
        raise ValueError("data.negatives is 'dense': pass the model that mines them")
    else:
        negatives = model_negatives(collection, model, data.negatives_cache_dir, model_key, data.negatives_depth)
    return collection, build_examples(collection, settings.task_name, negatives, source)


def sample_passages(example: Example, num_negatives: int, rng: np.random.Generator, corpus_ids: Sequence[str]
                    ) -> list[str]:
    """[one positive, num_negatives negatives] doc ids for one training step.

    The positive is drawn among the gold ids; negatives are drawn without replacement among the mined hard
    negatives, topped up with random corpus documents (never gold) when fewer were mined. Deterministic given rng.
    """
    positive = example.positive_ids[rng.integers(len(example.positive_ids))]
    hard = example.negative_ids
    if len(hard) >= num_negatives:
        return [positive, *(hard[i] for i in rng.choice(len(hard), num_negatives, replace=False))]
    chosen = list(hard)
    taken = set(hard) | set(example.positive_ids)
    if len(corpus_ids) - len(taken) < num_negatives - len(chosen):
        raise ValueError(f"corpus of {example.collection} is too small for {num_negatives} negatives per query")
    while len(chosen) < num_negatives:
        candidate = corpus_ids[rng.integers(len(corpus_ids))]
        if candidate not in taken:
            chosen.append(candidate)
            taken.add(candidate)
    return [positive, *chosen]


def key_ids(keys: Sequence[str]) -> torch.Tensor:
    """(len(keys),) int64 ids of "<collection>/<doc id>" keys, the same in every process (a 63-bit BLAKE2 hash, so
    never negative): what the device compares instead of strings. Two keys share an id with probability ~n^2 / 2^64
    (1e-7 for a million passages); a clash would only drop one in-batch negative from a softmax."""
    return torch.tensor([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") >> 1
                         for k in keys], dtype=torch.long)


def positive_key_ids(positives: Sequence[AbstractSet[str]]) -> torch.Tensor:
    """(B, G) int64: per query the key_ids of its gold passages, padded with -1 (no passage's id) to the most any
    query has."""
    width = max((len(gold) for gold in positives), default=0)
    ids = torch.full((len(positives), max(width, 1)), -1, dtype=torch.long)
    for row, gold in enumerate(positives):
        ids[row, : len(gold)] = key_ids(sorted(gold))
    return ids


def false_negative_mask(positive_ids: torch.Tensor, passage_ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(B, P) bool: True where passage p is gold for query b but is not b's target, to drop from the softmax.

    positive_ids (B, G) from :func:`positive_key_ids`, passage_ids (P,) from :func:`key_ids` (the ids of the global,
    gathered passages to mask in-batch negatives from other processes too), targets (B,) each query's gold among them.
    Tensor work only, on whatever device the ids are: nothing waits for the device.
    """
    mask = (positive_ids[:, :, None] == passage_ids[None, None, :]).any(dim=1)
    mask[torch.arange(len(mask), device=mask.device), targets] = False
    return mask
