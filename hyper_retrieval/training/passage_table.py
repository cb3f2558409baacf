"""Training passages looked up instead of encoded, for a model whose separate passage encoder is frozen.

A frozen passage encoder gives every passage one fixed vector, the one the evaluation index holds. Computing each
training corpus once (through the evaluation's on-disk embedding cache, so systems sharing the encoder share the work)
turns a training step's B * (1 + k) passage forwards into a row lookup. The vectors are the encoder's eval-mode
output (no dropout): training scores passages exactly as the index will, by their best window under MaxP.

The lookup is split in two so that the table can live on the accelerator: :meth:`PassageTable.rows` (host work, in
the thread that builds batches) turns keys into row numbers, and :meth:`PassageTable.gather` (on the table's device,
inside the step) turns row numbers into vectors without reading anything back.
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
from hyper_retrieval.search.shards import Embeddings


def has_frozen_passage_encoder(model) -> bool:
    """True when passages go through their own encoder that training never updates."""
    return getattr(model, "passage_encoder", None) is not None and bool(model.config.freeze_passage_encoder)


class PassageTable:
    """Vectors of every passage of the training corpora, keys "<collection>/<doc id>" -> rows, in one table (dense
    (R, d) float32, or a sparse one as CSR tensors) that :meth:`to` moves to the accelerator.

    With MaxP windows a passage has one vector per window, and a lookup gives them all (padded to `max_windows`, so
    that every batch and every process has the same shape), so that training scores a passage by its best window, as
    the index will.
    """

    def __init__(self, corpora: Mapping[str, Corpus], vectors: Mapping[str, Embeddings],
                 window_doc: Mapping[str, np.ndarray]) -> None:
        """``corpora``, ``vectors`` and ``window_doc`` are keyed by collection name (the prefix of the keys): each
        corpus's window vectors (W_c, d), dense or CSR, and the corpus row each window belongs to (W_c,), sorted."""
        self.corpora = dict(corpora)
        names = list(self.corpora)
        counts = [vectors[name].shape[0] for name in names]
        offsets = dict(zip(names, np.cumsum([0, *counts]).tolist(), strict=False))
        # a passage's windows are table rows first[row]:first[row + 1] of its collection
        self.first_window = {name: offsets[name] + np.searchsorted(window_doc[name], np.arange(len(corpora[name]) + 1))
                             for name in names}
        self.max_windows = max(int(np.diff(f).max()) for f in self.first_window.values())
        self.sparse = sp.issparse(vectors[names[0]])
        if self.sparse:
            table = sp.vstack([vectors[name] for name in names], format="csr", dtype=np.float32)
            self.dim = table.shape[1]
            self.indptr = torch.from_numpy(table.indptr.astype(np.int64))
            self.indices = torch.from_numpy(table.indices.astype(np.int64))
            self.values = torch.from_numpy(table.data)
            self.most_terms = int(np.diff(table.indptr).max())
        else:
            self.table = torch.from_numpy(np.concatenate([np.asarray(vectors[name], dtype=np.float32)
                                                          for name in names]))
            self.dim = self.table.shape[1]

    @classmethod
    def encode(cls, model, corpora: Mapping[str, Corpus], cache_dir: str | os.PathLike | None, batch_size: int = 64,
               show_progress: bool = True, windows: PassageWindows = FIRST_WINDOW) -> PassageTable:
        """The table of `model`'s frozen passage encoder over ``corpora`` (by collection name), each corpus encoded
        once through the embedding cache in ``cache_dir``; the model's train/eval mode is left as it was."""
        if not has_frozen_passage_encoder(model):
            raise ValueError("a PassageTable needs a model with a separate, frozen passage encoder")
        was_training = model.training
        encoder = CorpusEncoder(model, passage_encoder_fingerprint(model), batch_size,
                                cache_dir=cache_dir, show_progress=show_progress, windows=windows)
        stores = {name: encoder.encode(corpus)[0] for name, corpus in corpora.items()}
        model.train(was_training)
        return cls(corpora, {name: store.load() for name, store in stores.items()},
                   {name: store.doc for name, store in stores.items()})

    def to(self, device: torch.device | str) -> PassageTable:
        """The table on `device` (in place; returns self): the gathers then run there."""
        for name in ("indptr", "indices", "values") if self.sparse else ("table",):
            setattr(self, name, getattr(self, name).to(device))
        return self

    def rows(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Table rows of the passages ``keys`` ("<collection>/<doc id>"), on the host: (len(keys), W) int64, W = 1
        when every passage is one window (and None for the mask), else W = max_windows with a bool mask of the real
        windows (padding rows point at row 0)."""
        rows = np.zeros((len(keys), self.max_windows), dtype=np.int64)
        mask = np.zeros((len(keys), self.max_windows), dtype=bool)
        by_collection: dict[str, list[int]] = {}
        split = [split_document_key(key) for key in keys]
        for position, (name, _) in enumerate(split):
            by_collection.setdefault(name, []).append(position)
        for name, positions in by_collection.items():
            docs = self.corpora[name].rows_of([split[p][1] for p in positions])
            starts, ends = self.first_window[name][docs], self.first_window[name][docs + 1]
            owner = np.repeat(positions, ends - starts)
            windows = np.concatenate([np.arange(a, b) for a, b in zip(starts, ends, strict=True)])
            slot = windows - np.repeat(starts, ends - starts)  # each window's place among its passage's
            rows[owner, slot] = windows
            mask[owner, slot] = True
        if self.max_windows == 1:
            return torch.from_numpy(rows), None
        return torch.from_numpy(rows), torch.from_numpy(mask)

    def gather(self, rows: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The vectors of :meth:`rows`' output, on the table's device: (N, d) float32 when `mask` is None, else
        (N, W, d) with the padding windows zero. Nothing is read back to the host."""
        flat = rows.reshape(-1)
        vectors = self._sparse_rows(flat) if self.sparse else self.table.index_select(0, flat)
        vectors = vectors.view(*rows.shape, self.dim)
        if mask is None:
            return vectors[:, 0]
        return torch.where(mask[..., None], vectors, torch.zeros((), dtype=vectors.dtype, device=vectors.device))

    def _sparse_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Dense (len(rows), d) copies of CSR rows: each row's terms read into `most_terms` slots (the unused ones
        add 0 to column 0), so that the shapes never depend on the data."""
        starts = self.indptr[rows]
        lengths = self.indptr[rows + 1] - starts
        slots = torch.arange(self.most_terms, device=rows.device)
        used = slots[None] < lengths[:, None]
        positions = torch.where(used, starts[:, None] + slots[None], 0)
        columns = torch.where(used, self.indices[positions], 0)
        values = torch.where(used, self.values[positions], 0.0)
        return torch.zeros(len(rows), self.dim, device=rows.device).scatter_add_(1, columns, values)

    def lookup(self, keys: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`rows` then :meth:`gather` at once: the vectors of ``keys`` (and the window mask, or None)."""
        rows, mask = self.rows(keys)
        device = self.table.device if not self.sparse else self.values.device
        mask = mask.to(device) if mask is not None else None
        return self.gather(rows.to(device), mask), mask
