"""Training passages looked up instead of encoded, for a model whose separate passage encoder is frozen.

A frozen passage encoder gives every passage one fixed vector, the one the evaluation index holds. Computing each
training corpus once (through the evaluation's on-disk embedding cache, so systems sharing the encoder share the work)
turns a training step's B * (1 + k) passage forwards into a row lookup. The vectors are the encoder's eval-mode
output (no dropout): training scores passages exactly as the index will.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from .beir import Corpus
from .embedding_cache import Embeddings, passage_encoder_fingerprint
from .evaluation import ModelSearcher


def has_frozen_passage_encoder(model) -> bool:
    """True when passages go through their own encoder that training never updates."""
    return getattr(model, "passage_encoder", None) is not None and bool(model.config.freeze_passage_encoder)


class PassageTable:
    """Vectors of every passage of the training corpora: keys "<collection>/<doc id>" -> rows (dense or CSR)."""

    def __init__(self, model, corpora: Mapping[str, Corpus], cache_dir: str | os.PathLike | None,
                 batch_size: int = 64, show_progress: bool = True) -> None:
        """``corpora`` maps a collection name (the prefix of the batch keys) to its corpus."""
        if not has_frozen_passage_encoder(model):
            raise ValueError("a PassageTable needs a model with a separate, frozen passage encoder")
        was_training = model.training
        searcher = ModelSearcher(model, passage_encoder_fingerprint(model), batch_size,
                                 cache_dir=cache_dir, show_progress=show_progress)
        self.corpora = dict(corpora)
        self.vectors: dict[str, Embeddings] = {name: searcher.encode_corpus(c)[0] for name, c in corpora.items()}
        model.train(was_training)

    def lookup(self, keys: Sequence[str]) -> torch.Tensor:
        """(len(keys), dim) float32 vectors of the passages ``keys`` ("<collection>/<doc id>"), in that order."""
        by_collection: dict[str, list[int]] = {}
        split = [key.split("/", 1) for key in keys]
        for position, (name, _) in enumerate(split):
            by_collection.setdefault(name, []).append(position)
        out: np.ndarray | None = None
        for name, positions in by_collection.items():
            rows = self.corpora[name].rows_of([split[p][1] for p in positions])
            vectors = self.vectors[name][rows]
            vectors = vectors.toarray() if sp.issparse(vectors) else np.asarray(vectors)
            if out is None:
                out = np.empty((len(keys), vectors.shape[1]), dtype=np.float32)
            out[positions] = vectors
        return torch.from_numpy(out)
