"""sentence-transformers module of a HypeR retriever (ships in the model repository, named in modules.json).

`SentenceTransformer(repo, trust_remote_code=True)` loads the repository's own model through AutoModel;
`encode_query` runs the query side (with the per-query hyper-prompt), `encode_document` the passage side (without).
The model is asymmetric, so a plain `encode` without a task is an error naming the two (as sentence-transformers'
Router without a default route): a client that encodes queries and documents alike (BEIR's models.SentenceBERT)
would otherwise give documents the query side, silently.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from sentence_transformers.base.modules import InputModule
from transformers import AutoModel

TASKS = ("query", "document")
# A folder's list of the files it holds beside the network (a JSON list of relative paths), written by whoever
# publishes it: `save` copies what it names, so that saving a published folder publishes it again
EXTRA_FILES_LIST = "extra_files.json"


def _extra_files(listed: Path) -> list[str]:
    """The relative paths an EXTRA_FILES_LIST names, each inside its folder; ValueError naming the file and the
    entry otherwise."""
    try:
        names = json.loads(listed.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{listed}: not readable as JSON ({e}); it should list the folder's extra files") from e
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{listed}: expected a JSON list of relative paths, got {type(names).__name__}")
    folder = listed.parent.resolve()
    outside = [n for n in names if not (folder / n).resolve().is_relative_to(folder)]
    if outside:
        raise ValueError(f"{listed}: {outside} lie outside {listed.parent}; only files inside it are copied")
    return names


class HyperSentenceEncoder(InputModule):
    """Tokenizes and encodes in one module; `task` ("query" or "document") picks the side."""

    forward_kwargs = {"task"}

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        if model.tokenizer is None:
            raise ValueError("the HypeR model has no tokenizer beside its weights")
        self.model = model
        self.tokenizer = model.tokenizer

    @property
    def max_seq_length(self) -> int:
        return self.model.config.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        self.model.config.max_seq_length = value

    def preprocess(self, inputs: list[str], prompt: str | None = None, task: str | None = None,
                   **kwargs) -> dict[str, torch.Tensor]:
        """Texts -> padded token ids, truncated as the model's own encode_* do: documents at `max_seq_length`,
        queries (task "query") at the config's query length."""
        texts = [prompt + text for text in inputs] if prompt else list(inputs)
        limit = self.model.config.query_length if task == "query" else self.max_seq_length
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
        return dict(tokens)

    def forward(self, features: dict[str, Any], task: str | None = None, **kwargs) -> dict[str, Any]:
        """Adds "sentence_embedding" (B, d) or (B, V), "token_embeddings" (dense) and "prompt_attention" (queries).

        The side is `task`, else `features["task"]` (what sentence-transformers' collator stamps from the trainer's
        `router_mapping`, as its Router reads it), else the query side."""
        if task is None:
            task = features.get("task")
        if task is None:
            raise ValueError(
                "this HypeR model encodes queries and documents differently, and no task was given: use "
                "model.encode_query(...) for queries (with the hyper-prompt) and model.encode_document(...) for "
                "passages, or encode(..., task='query' | 'document'); in training, give the trainer "
                "router_mapping={'anchor': 'query', 'positive': 'document'}. (BEIR's models.SentenceBERT encodes "
                "both sides with plain encode: pass DenseRetrievalExactSearch the AutoModel instead, whose "
                "encode_queries / encode_corpus it calls.)")
        if task not in TASKS:
            raise ValueError(f"task={task!r}: this model knows {TASKS}")
        out = self.model(
            input_ids=features["input_ids"],
            attention_mask=features["attention_mask"],
            token_type_ids=features.get("token_type_ids"),
            is_query=task != "document",
        )
        features["sentence_embedding"] = out.embeddings
        if out.last_hidden_state is not None:
            features["token_embeddings"] = out.last_hidden_state
        if out.prompt_attention is not None:
            features["prompt_attention"] = out.prompt_attention
        return features

    def get_embedding_dimension(self) -> int:
        backbone = self.model.config.backbone_config
        return backbone.vocab_size if self.model.config.representation == "sparse" else backbone.hidden_size

    def save(self, output_path: str, *args, safe_serialization: bool = True, **kwargs) -> None:
        """The network (save_pretrained), and, for a model loaded from a folder with an EXTRA_FILES_LIST, the files
        that list names (and the list): ``SentenceTransformer.save`` of a published folder is that folder again.
        Nothing else of the source folder is copied. A list that is not a JSON list of relative paths inside the
        folder is refused (ValueError naming it) before anything is written; a listed file that is gone is skipped."""
        source, target = Path(self.model.name_or_path or "."), Path(output_path)
        listed = source / EXTRA_FILES_LIST
        names = _extra_files(listed) if listed.is_file() and source.resolve() != target.resolve() else None
        self.model.save_pretrained(output_path)
        for name in [] if names is None else [*names, EXTRA_FILES_LIST]:
            if (source / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source / name, target / name)

    @classmethod
    def load(
        cls,
        model_name_or_path: str,
        subfolder: str = "",
        token: bool | str | None = None,
        cache_folder: str | None = None,
        revision: str | None = None,
        local_files_only: bool = False,
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        **kwargs,
    ) -> HyperSentenceEncoder:
        """The repository's model through AutoModel (its remote code); sentence-transformers' other options unused."""
        hub_kwargs = {"subfolder": subfolder} if subfolder else {}
        model = AutoModel.from_pretrained(
            model_name_or_path,
            trust_remote_code=trust_remote_code,
            token=token,
            cache_dir=cache_folder,
            revision=revision,
            local_files_only=local_files_only,
            **hub_kwargs,
            **(model_kwargs or {}),
        )
        return cls(model.eval())
