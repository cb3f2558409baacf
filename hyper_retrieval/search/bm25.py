"""BM25 baseline through ``bm25s``: Lucene variant, English stopwords, PyStemmer English stemmer.

BM25 runs on the CPU only: bm25s's top-k is numpy's, never JAX's, and JAX (when installed) is kept off the GPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

# Before bm25s is first imported: bm25s 0.3.16 (selection.py) imports jax.lax whenever it can and runs a top-k with it
# at import time, and JAX on a GPU preallocates 75% of its memory in every such process (CUDA out-of-memory in side-by-
# side miners, three quarters of the GPU kept from torch in train.py). JAX reads these variables at import and when it
# starts a backend, so setting them after bm25s's import is too late; setdefault leaves a user's own settings alone.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import bm25s  # noqa: E402
import numpy as np  # noqa: E402
import Stemmer  # noqa: E402

from hyper_retrieval.core.types import Run  # noqa: E402
from hyper_retrieval.data.beir import Document  # noqa: E402
from hyper_retrieval.search.index import run_from_topk  # noqa: E402
from modeling_hyper.encoding_hyper import passage_text  # noqa: E402

# bm25s's top-k backend: "auto" means JAX whenever `import jax` works.
SELECTION_BACKEND = "numpy"


class BM25:
    """A BM25 index over documents {"title", "text"} with the given ids; ``search`` returns a run like dense search."""

    def __init__(self, doc_ids: Sequence[str], docs: Sequence[Document], k1: float = 0.9, b: float = 0.4,
                 show_progress: bool = False) -> None:
        if len(doc_ids) != len(docs) or not docs:
            raise ValueError(f"need as many ids as documents, and at least one ({len(doc_ids)} ids, {len(docs)} docs)")
        # eval.py's --bm25-k1/--bm25-b and the training config check these too; past k1 = 100 the saturation no
        # longer changes, and an infinite or huge k1 overflows bm25s's float32 scores into empty runs
        if not (math.isfinite(k1) and 0 <= k1 <= 100):
            raise ValueError(f"BM25 k1={k1!r}: expected a number in [0, 100]")
        if not (math.isfinite(b) and 0 <= b <= 1):
            raise ValueError(f"BM25 b={b!r}: expected a number in [0, 1]")
        self.doc_ids = list(doc_ids)
        self.k1, self.b = k1, b
        self.show_progress = show_progress
        self._stemmer = Stemmer.Stemmer("english")
        # backend="numpy" (bm25s's default): scoring in numpy, whose retrieve honours backend_selection (numba's
        # ignores it).
        self._bm25 = bm25s.BM25(method="lucene", k1=k1, b=b, backend="numpy")
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
                                              show_progress=self.show_progress, backend_selection=SELECTION_BACKEND)
        indices = np.where(scores > 0, indices, -1)
        return run_from_topk(list(queries), self.doc_ids, scores, indices)
