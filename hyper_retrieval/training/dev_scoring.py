"""Dev scoring during training: the dev splits, the synthesizer's calibration queries, the score of a model."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hyper_retrieval.core.atomic_files import swap_folder
from hyper_retrieval.core.fingerprints import passage_encoder_fingerprint
from hyper_retrieval.data.beir import Collection, Corpus, load_other_split
from hyper_retrieval.evaluation.scoring import evaluate_collections
from hyper_retrieval.search.corpus_encoder import FIRST_WINDOW, CorpusEncoder, PassageWindows
from hyper_retrieval.search.searchers import ModelSearcher
from hyper_retrieval.training.batching import TaskData
from hyper_retrieval.training.config import DataSettings
from hyper_retrieval.training.passage_table import has_frozen_passage_encoder
from hyper_retrieval.training.run_state import TrainState
from modeling_hyper import HyperRetrieverModel

CALIBRATION_QUERIES = 4096  # training queries that set the synthesizer's statistics (model.calibrate_synthesizer)


def sample_queries(tasks: Sequence[TaskData], n: int, seed: int) -> list[str]:
    """Up to n query texts drawn without replacement from all tasks' examples (so in proportion to task size)."""
    queries = [ex.query for task in tasks for ex in task.examples]
    rng = np.random.default_rng(seed)
    return [queries[i] for i in rng.choice(len(queries), size=min(n, len(queries)), replace=False)]


def load_dev_collections(data: DataSettings, corpora: dict[str, Corpus]) -> list[Collection]:
    """The dev split of every training collection (none when dev_split is None). `corpora` maps a collection's
    path to its already loaded corpus, reused for local folders rather than read again."""
    if data.dev_split is None:
        return []
    paths = dict.fromkeys(c.path for c in data.collections)
    return [load_other_split(path, data.dev_split, corpora[path]) for path in paths]


def dev_score(model: HyperRetrieverModel, collections: list[Collection], metric: str,
              cache_dir: str | None = None, windows: PassageWindows = FIRST_WINDOW) -> float:
    """Mean of `metric` over the dev collections, each searched on its own full corpus. A frozen passage encoder's
    corpus vectors come from (and go to) the embedding cache in `cache_dir`; others are encoded afresh."""
    frozen = has_frozen_passage_encoder(model) and cache_dir is not None
    encoder = CorpusEncoder(model, passage_encoder_fingerprint(model) if frozen else "training",
                            cache_dir=Path(cache_dir) if frozen else None, show_progress=False, windows=windows)
    searcher = ModelSearcher(encoder)
    results = evaluate_collections(searcher, collections, zero_shot=set(), k=100)
    return sum(r.metrics[metric] for r in results) / len(results)


class DevSelection:
    """Scores the model on the dev collections every eval_every steps and keeps the best in `<output_dir>/best`
    (the synthesizer calibrated on `calibration_queries` first, as the final model will be)."""

    def __init__(self, collections: list[Collection], metric: str, cache_dir: str | None, windows: PassageWindows,
                 calibration_queries: list[str], output_dir: Path) -> None:
        self.collections, self.metric, self.cache_dir, self.windows = collections, metric, cache_dir, windows
        self.calibration_queries, self.best = calibration_queries, output_dir / "best"

    def __call__(self, model: HyperRetrieverModel, state: TrainState, is_main_process: bool) -> float:
        """The dev score of `model` (unwrapped) at state.step; a new best updates `state` and best/."""
        model.calibrate_synthesizer(self.calibration_queries)
        score = dev_score(model, self.collections, self.metric, self.cache_dir, self.windows)
        if score > state.best_score:
            state.best_score, state.best_step = score, state.step
            if is_main_process:
                swap_folder(model.save_pretrained, self.best)
        return score
