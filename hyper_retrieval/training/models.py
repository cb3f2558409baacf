"""The model a training config describes: its hyper-prompt (none, prefix, HypeR's pool, one per task) and backbone."""

from __future__ import annotations

from collections.abc import Sequence

from hyper_retrieval.search.corpus_encoder import PassageWindows
from hyper_retrieval.training.config import PROMPT_SETTINGS, ModelSettings
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


def prompt_count(model: HyperRetrieverModel) -> int:
    """The prompts a model's pool holds: its pool_size, 1 without a pool (what the losses and routing logs need)."""
    return model.hyper_prompt.config.pool_size if model.hyper_prompt is not None else 1


def passage_windows(settings: ModelSettings) -> PassageWindows:
    """How the configured model reads long passages (model.passage_windows, model.passage_window_stride)."""
    return PassageWindows(settings.passage_windows, settings.passage_window_stride)
