"""Pieces of train.py that are not the loop: building the model from settings, run state, dev scoring."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from hyper_retrieval.data.beir import Collection, Corpus, load_collection, load_split
from hyper_retrieval.evaluation.scoring import evaluate_collections
from hyper_retrieval.search.cache import passage_encoder_fingerprint
from hyper_retrieval.search.corpus_encoder import FIRST_WINDOW, CorpusEncoder, PassageWindows
from hyper_retrieval.search.searchers import ModelSearcher
from hyper_retrieval.training.batching import TaskData
from hyper_retrieval.training.config import PROMPT_SETTINGS, DataSettings, ModelSettings
from hyper_retrieval.training.passage_table import has_frozen_passage_encoder
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel


def prompt_config(settings: ModelSettings, task_names: Sequence[str] = ()) -> HyperPromptConfig | None:
    """none -> no prompt; prefix -> one shared prefix (a pool of 1); hyper -> HypeR's pool of pool_size; task -> a
    prompt per training task (`task_names`), chosen by the task id."""
    if settings.prompt == "none":
        return None
    values = {name: getattr(settings, name) for name in PROMPT_SETTINGS}
    if settings.prompt == "task":
        return HyperPromptConfig(**values | {"pool_size": len(task_names), "synthesizer": "task",
                                             "task_names": list(task_names)})
    return HyperPromptConfig(**values | {"pool_size": 1 if settings.prompt == "prefix" else settings.pool_size})


def build_model(settings: ModelSettings, task_names: Sequence[str] = ()) -> HyperRetrieverModel:
    """A HyperRetrieverModel around the configured backbone (pip-shipped weights found by from_backbone);
    `task_names` (data.task_names) name the prompts of model.prompt=task."""
    return HyperRetrieverModel.from_backbone(
        settings.backbone,
        hyper_prompt=prompt_config(settings, task_names),
        representation=settings.representation,
        pooling=settings.pooling,
        normalize=settings.normalize,
        share_encoders=settings.share_encoders,
        freeze_passage_encoder=settings.freeze_passage_encoder,
        freeze_query_backbone=settings.freeze_query_backbone,
        max_seq_length=settings.max_passage_length,
        max_query_length=settings.max_query_length,
    )


CALIBRATION_QUERIES = 4096  # training queries that set the synthesizer's statistics (model.calibrate_synthesizer)


def sample_queries(tasks: Sequence[TaskData], n: int, seed: int) -> list[str]:
    """Up to n query texts drawn without replacement from all tasks' examples (so in proportion to task size)."""
    queries = [ex.query for task in tasks for ex in task.examples]
    rng = np.random.default_rng(seed)
    return [queries[i] for i in rng.choice(len(queries), size=min(n, len(queries)), replace=False)]


@dataclass
class TrainState:
    """Counters saved with every checkpoint (registered with accelerator.register_for_checkpointing)."""

    step: int = 0  # optimizer steps done
    micro_step: int = 0  # batches consumed: where the sampler resumes
    best_score: float = float("-inf")
    best_step: int = -1

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def load_dev_collections(data: DataSettings, corpora: dict[str, Corpus]) -> list[Collection]:
    """The dev split of every training collection (none when dev_split is None). `corpora` maps a collection's
    path to its already loaded corpus, reused for local folders rather than read again."""
    if data.dev_split is None:
        return []
    paths = dict.fromkeys(c.path for c in data.collections)
    return [load_split(path, data.dev_split, corpora[path]) if Path(path).exists()
            else load_collection(path, data.dev_split) for path in paths]


def passage_windows(settings: ModelSettings) -> PassageWindows:
    """How the configured model reads long passages (model.passage_windows, model.passage_window_stride)."""
    return PassageWindows(settings.passage_windows, settings.passage_window_stride)


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


def truncate_log(path: Path, step: int) -> None:
    """Drops the records of steps after `step` from log.jsonl (those a resumed run will log again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in kept))


def append_jsonl(path: Path, record: dict) -> None:
    """Appends one JSON line (log.jsonl: a training record every log_every steps, a dev record per evaluation)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
