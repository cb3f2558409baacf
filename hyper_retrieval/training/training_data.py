"""What a run trains and selects on: each task's examples (hard negatives mined once), the dev splits, and the
passage table of a frozen passage encoder."""

from __future__ import annotations

from dataclasses import dataclass

from accelerate import Accelerator

from hyper_retrieval.data.beir import Collection
from hyper_retrieval.search.corpus_encoder import PassageWindows
from hyper_retrieval.training.batching import BatchBuilder, TaskData
from hyper_retrieval.training.config import TrainConfig
from hyper_retrieval.training.dev_scoring import load_dev_collections
from hyper_retrieval.training.examples import load_task_examples
from hyper_retrieval.training.passage_table import PassageTable, has_frozen_passage_encoder
from hyper_retrieval.training.sampler import MultiTaskBatchSampler
from modeling_hyper import HyperRetrieverModel


@dataclass
class TrainingData:
    tasks: list[TaskData]  # in data.task_names order: a task's index is its task id
    dev_collections: list[Collection]  # empty when data.dev_split is None
    passage_table: PassageTable | None  # the training corpora's vectors, for a frozen passage encoder


def load_training_data(cfg: TrainConfig, model: HyperRetrieverModel, accelerator: Accelerator,
                       windows: PassageWindows) -> TrainingData:
    """Examples per task, with hard negatives mined by BM25 or `model` (the main process first, the others then read
    its cache); the dev splits (corpora shared with training); a frozen passage encoder's table, each training
    corpus encoded once (through train.embedding_cache_dir), held on the accelerator and then looked up."""
    tasks = {name: TaskData(name, [], {}) for name in cfg.data.task_names}
    corpora = {}
    with accelerator.main_process_first():
        for coll in cfg.data.collections:
            collection, examples = load_task_examples(coll, cfg.data, model, cfg.model.backbone)
            tasks[coll.task_name].examples.extend(examples)
            tasks[coll.task_name].collections[collection.name] = collection
            corpora[coll.path] = collection.corpus
        dev_collections = load_dev_collections(cfg.data, corpora)
        passage_table = None
        if has_frozen_passage_encoder(model):
            passage_table = PassageTable.encode(
                model.to(accelerator.device), {n: c.corpus for t in tasks.values() for n, c in t.collections.items()},
                cfg.train.embedding_cache_dir, show_progress=accelerator.is_main_process, windows=windows,
            ).to(accelerator.device)
    accelerator.print(", ".join(f"{t.name}: {len(t.examples)} queries" for t in tasks.values()))
    return TrainingData(list(tasks.values()), dev_collections, passage_table)


def batch_sampler(cfg: TrainConfig, data: TrainingData, num_replicas: int = 1, rank: int = 0) -> MultiTaskBatchSampler:
    """The configured sampler over the tasks' examples (data.sampling, temperature, seed), for process `rank`."""
    return MultiTaskBatchSampler([len(t.examples) for t in data.tasks], cfg.train.batch_size, cfg.data.sampling,
                                 cfg.data.task_sampling_temperature, cfg.train.seed, num_replicas=num_replicas,
                                 rank=rank)


def batch_builder(cfg: TrainConfig, data: TrainingData, tokenizer) -> BatchBuilder:
    """The configured BatchBuilder; passages as rows of data's passage table when there is one; the queries' token ids
    through train.embedding_cache_dir."""
    rows = data.passage_table.rows if data.passage_table is not None else None
    return BatchBuilder(data.tasks, tokenizer, cfg.data.num_negatives, cfg.model.max_query_length,
                        cfg.model.max_passage_length, cfg.train.seed, passage_rows=rows,
                        cache_dir=cfg.train.embedding_cache_dir)
