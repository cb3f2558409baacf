"""BM25 baseline through ``bm25s``: Lucene variant, English stopwords, PyStemmer English stemmer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import bm25s
import numpy as np
import Stemmer

from hyper_retrieval.core.types import Run
from hyper_retrieval.data.beir import Document
from hyper_retrieval.search.index import run_from_topk
from modeling_hyper.encoding_hyper import passage_text


class BM25:
    """A BM25 index over documents {"title", "text"} with the given ids; ``search`` returns a run like dense search."""

    def __init__(self, doc_ids: Sequence[str], docs: Sequence[Document], k1: float = 0.9, b: float = 0.4,
                 show_progress: bool = False) -> None:
        if len(doc_ids) != len(docs) or not docs:
            raise ValueError(f"need as many ids as documents, and at least one ({len(doc_ids)} ids, {len(docs)} docs)")
        self.doc_ids = list(doc_ids)
        self.k1, self.b = k1, b
        self.show_progress = show_progress
        self._stemmer = Stemmer.Stemmer("english")
        self._bm25 = bm25s.BM25(method="lucene", k1=k1, b=b)
        self._bm25.index(self.tokenize([passage_text(d) for d in docs]), show_progress=show_progress)

    def tokenize(self, texts: list[str]) -> list[list[str]]:
        """Lower-cased word tokens (2+ word characters), English stopwords removed, stemmed."""
        return bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, return_ids=False,
                              show_progress=self.show_progress)

    def search(self, queries: Mapping[str, str], k: int = 100) -> Run:
        """Top-k documents of each query {query id: text} as a run {query id: {doc id: score}}.

        Documents with score 0 (no query term in common) are left out.
        """
        k = min(k, len(self.doc_ids))
        indices, scores = self._bm25.retrieve(self.tokenize(list(queries.values())), k=k,
                                              show_progress=self.show_progress)
        indices = np.where(scores > 0, indices, -1)
        return run_from_topk(list(queries), self.doc_ids, scores, indices)
