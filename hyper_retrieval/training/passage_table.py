"""Training passages looked up instead of encoded, for a model whose separate passage encoder is frozen.

A frozen passage encoder gives every passage one fixed vector, the one the evaluation index holds. Computing each
training corpus once (through the evaluation's on-disk embedding cache, so systems sharing the encoder share the work)
turns a training step's B * (1 + k) passage forwards into a row lookup. The vectors are the encoder's eval-mode
output (no dropout): training scores passages exactly as the index will, by their best window under MaxP.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
import torch

from hyper_retrieval.core.fingerprints import passage_encoder_fingerprint
from hyper_retrieval.data.beir import Corpus, split_document_key
from hyper_retrieval.search.corpus_encoder import FIRST_WINDOW, CorpusEncoder, PassageWindows
from hyper_retrieval.search.shards import ShardStore


def has_frozen_passage_encoder(model) -> bool:
    """True when passages go through their own encoder that training never updates."""
    return getattr(model, "passage_encoder", None) is not None and bool(model.config.freeze_passage_encoder)


class PassageTable:
    """Vectors of every passage of the training corpora: keys "<collection>/<doc id>" -> rows (dense or CSR).

    With MaxP windows (``windows.mode == "max"``) a passage has one vector per window and :meth:`lookup` gives them
    all, so that training scores a passage by its best window, as the index will.
    """

    def __init__(self, model, corpora: Mapping[str, Corpus], cache_dir: str | os.PathLike | None,
                 batch_size: int = 64, show_progress: bool = True, windows: PassageWindows = FIRST_WINDOW) -> None:
        """``corpora`` maps a collection name (the prefix of the batch keys) to its corpus."""
        if not has_frozen_passage_encoder(model):
            raise ValueError("a PassageTable needs a model with a separate, frozen passage encoder")
        was_training = model.training
        encoder = CorpusEncoder(model, passage_encoder_fingerprint(model), batch_size,
                                cache_dir=cache_dir, show_progress=show_progress, windows=windows)
        self.corpora = dict(corpora)
        stores: dict[str, ShardStore] = {name: encoder.encode(c)[0] for name, c in corpora.items()}
        # looked up at every step: held whole (dense: memory-mapped when the corpus is one shard; sparse: in memory)
        self.vectors = {name: store.load() for name, store in stores.items()}
        # a passage's windows are rows first[row]:first[row + 1] of its collection's vectors
        self.first_window = {name: np.searchsorted(store.doc, np.arange(len(corpora[name]) + 1))
                             for name, store in stores.items()}
        # every lookup is padded to the same number of windows, so that all processes gather equal shapes
        self.max_windows = max(int(np.diff(f).max()) for f in self.first_window.values())
        model.train(was_training)

    def lookup(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The vectors of the passages ``keys`` ("<collection>/<doc id>"), in that order: (len(keys), dim) float32
        and None when every passage is one window; else (len(keys), W, dim) with a bool mask (len(keys), W) of the
        real windows, W the most windows any training passage has."""
        by_collection: dict[str, list[int]] = {}
        split = [split_document_key(key) for key in keys]
        for position, (name, _) in enumerate(split):
            by_collection.setdefault(name, []).append(position)
        out: np.ndarray | None = None
        mask = np.zeros((len(keys), self.max_windows), dtype=bool)
        for name, positions in by_collection.items():
            rows = self.corpora[name].rows_of([split[p][1] for p in positions])
            starts, ends = self.first_window[name][rows], self.first_window[name][rows + 1]
            windows = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
            vectors = self.vectors[name][windows]
            vectors = vectors.toarray() if sp.issparse(vectors) else np.asarray(vectors)
            if out is None:
                out = np.zeros((len(keys), self.max_windows, vectors.shape[1]), dtype=np.float32)
            slot = np.concatenate([np.arange(b - a) for a, b in zip(starts, ends, strict=True)])
            owner = np.repeat(positions, ends - starts)
            out[owner, slot] = vectors
            mask[owner, slot] = True
        if self.max_windows == 1:
            return torch.from_numpy(out[:, 0]), None
        return torch.from_numpy(out), torch.from_numpy(mask)
