"""Hard negatives: mined once (BM25 with bm25s, or dense top-k from given embeddings) and cached on disk.

Every query's gold passages are removed from its negatives: the positives of its judgements (score > 0) and any
document whose normalised text is identical to a positive's (unmarked twins, e.g. ~100 in qasc and vitaminc).
The release's gold filter was bypassed; here it is applied in one place, `_drop_gold`, for every miner.
BM25 is `bm25.BM25` (bm25s, lucene variant, English stopwords, PyStemmer); model-based mining takes the top-k
of any `index` search.

The cache is one JSON file per (collection, miner, settings): its name carries a hash of a key holding the
corpus fingerprint (path, size, mtime), a hash of the split's queries and judgements, and the miner's settings;
the key is stored in the file and compared on load. Files are written to a temporary name and renamed into place
(core.atomic_files), so a crash never leaves a half-written cache. Under several processes, let the main process
mine first (e.g. `with accelerator.main_process_first():`); the others then read the cache.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyper_retrieval.core.atomic_files import atomic_file
from hyper_retrieval.core.fingerprints import content_key
from hyper_retrieval.data.beir import Collection
from hyper_retrieval.search.bm25 import BM25
from hyper_retrieval.search.corpus_encoder import CorpusEncoder
from hyper_retrieval.search.index import DenseIndex
from hyper_retrieval.search.searchers import ModelSearcher
from modeling_hyper.encoding_hyper import passage_text

logger = logging.getLogger(__name__)

Negatives = dict[str, list[str]]  # query id -> doc ids, best-ranked first, gold removed
CACHE_VERSION = 1


@dataclass(frozen=True)
class BM25Settings:
    """BM25 settings for mining (bm25s lucene variant, English stopwords, PyStemmer English stemmer)."""

    k1: float = 1.5
    b: float = 0.75
    depth: int = 100  # negatives kept per query (after removing gold and zero-score hits)


def _normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


def gold_ids(collection: Collection, doc_texts: Sequence[str] | None = None) -> dict[str, set[str]]:
    """Per query: its positive doc ids (score > 0) plus every document with the same normalised text as one.

    `doc_texts` are the corpus texts in `collection.corpus.ids` order (read from the corpus when None).
    """
    corpus = collection.corpus
    if doc_texts is None:
        doc_texts = [passage_text(d) for batch in corpus.batches(10_000) for d in batch]
    text_of = dict(zip(corpus.ids, (_normalise(t) for t in doc_texts), strict=True))
    by_text: dict[str, list[str]] = {}
    for doc_id, text in text_of.items():
        by_text.setdefault(text, []).append(doc_id)
    gold: dict[str, set[str]] = {}
    for qid, judged in collection.qrels.items():
        positives = {d for d, score in judged.items() if score > 0}
        gold[qid] = {twin for d in positives for twin in by_text[text_of[d]]} | positives
    return gold


def _drop_gold(ranked: Sequence[str], gold: set[str], depth: int) -> list[str]:
    """The first `depth` ids of `ranked` that are not gold."""
    return [doc_id for doc_id in ranked if doc_id not in gold][:depth]


def bm25_negatives(collection: Collection, cache_dir: str | os.PathLike, settings: BM25Settings = BM25Settings()
                   ) -> Negatives:
    """BM25 hard negatives for every judged query of `collection`, from the cache or mined and cached."""
    key = {"miner": "bm25", "bm25": dataclasses.asdict(settings), **_collection_key(collection)}
    return cached_negatives(cache_dir, f"{collection.name}-bm25", key, lambda: _mine_bm25(collection, settings))


def _mine_bm25(collection: Collection, settings: BM25Settings) -> Negatives:
    corpus = collection.corpus
    logger.info("mining BM25 negatives for %s: %d queries over %d documents",
                collection.name, len(collection.qrels), len(corpus))
    docs = [d for batch in corpus.batches(10_000) for d in batch]
    gold = gold_ids(collection, [passage_text(d) for d in docs])
    k = settings.depth + max(len(g) for g in gold.values())
    run = BM25(corpus.ids, docs, k1=settings.k1, b=settings.b).search(
        {q: collection.queries[q] for q in collection.qrels}, k=k)  # zero-score hits left out, best first
    return {qid: _drop_gold(list(ranked), gold[qid], settings.depth) for qid, ranked in run.items()}


def negatives_from_topk(query_ids: Sequence[str], doc_ids: Sequence[str], indices: np.ndarray,
                        gold: Mapping[str, set[str]], depth: int) -> Negatives:
    """Negatives from a search's top-k rows `indices` (Q, k), best first, -1 for an empty slot; gold removed.

    Use with `index.DenseIndex` / `index.SparseIndex` searches of the current model's query and corpus vectors,
    with k = depth + the largest gold set, and wrap the call in `cached_negatives` with a key naming the model
    checkpoint. `gold` is typically `gold_ids(collection)`.
    """
    return {qid: _drop_gold([doc_ids[j] for j in row if j >= 0], gold.get(qid, set()), depth)
            for qid, row in zip(query_ids, indices, strict=True)}


def dense_negatives(query_ids: Sequence[str], query_emb: np.ndarray, doc_ids: Sequence[str], doc_emb: np.ndarray,
                    gold: Mapping[str, set[str]], depth: int) -> Negatives:
    """Negatives by exact inner product (faiss flat index): query_emb (Q, d) against doc_emb (D, d), gold removed."""
    k = depth + max((len(g) for g in gold.values()), default=0)
    _, indices = DenseIndex(np.asarray(doc_emb, dtype=np.float32)).search(np.asarray(query_emb, dtype=np.float32), k)
    return negatives_from_topk(query_ids, doc_ids, indices, gold, depth)


def model_negatives(collection: Collection, model: Any, cache_dir: str | os.PathLike, model_key: str, depth: int
                    ) -> Negatives:
    """Hard negatives from a retriever with BEIR's interface (dense or sparse), gold removed, cached under model_key.

    `model_key` must identify the weights (e.g. the backbone name for the initial model, a checkpoint path later).
    """
    def mine() -> Negatives:
        gold = gold_ids(collection)
        k = depth + max(len(g) for g in gold.values())
        queries = {q: collection.queries[q] for q in collection.qrels}
        searcher = ModelSearcher(CorpusEncoder(model, model_fingerprint=model_key, show_progress=True))
        run = searcher.search(collection.corpus, queries, k).run
        return {qid: _drop_gold(sorted(hits, key=hits.get, reverse=True), gold[qid], depth)
                for qid, hits in run.items()}

    key = {"miner": "model", "model": model_key, "depth": depth, **_collection_key(collection)}
    return cached_negatives(cache_dir, f"{collection.name}-model", key, mine)


def _collection_key(collection: Collection) -> dict[str, str]:
    """The part of a cache key that identifies the data: corpus fingerprint and a hash of queries + judgements."""
    return {"corpus": collection.corpus.fingerprint, "split": content_key([collection.queries, collection.qrels])}


def cached_negatives(cache_dir: str | os.PathLike, name: str, key: Mapping[str, Any],
                     compute: Callable[[], Negatives]) -> Negatives:
    """Load `cache_dir/<name>-<hash(key)>.json` if it holds `key`, else run `compute()` and write it atomically."""
    key = {"version": CACHE_VERSION, **key}
    path = Path(cache_dir) / f"{name}-{content_key(key)}.json"
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored.get("key") == key and isinstance(stored.get("negatives"), dict):
                logger.info("hard negatives from cache %s", path)
                return stored["negatives"]
            logger.warning("%s holds another key; mining again", path)
        except (ValueError, AttributeError) as e:  # damaged: not JSON, or not the object written
            logger.warning("%s is damaged (%s); mining again", path, e)
    negatives = compute()
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps({"key": key, "negatives": negatives}), encoding="utf-8")
    logger.info("hard negatives cached in %s", path)
    return negatives
