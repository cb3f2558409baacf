"""HypeR retriever: a BERT-family encoder whose query side gets a per-query hyper-prompt as a deep prefix.

Shapes: B texts of T tokens, hidden size d, vocabulary V, pool of N prompts of L virtual tokens.
- dense embeddings (B, d): mean or CLS pooling of the last hidden states, optionally L2-normalised;
- sparse embeddings (B, V): SPLADE, max over tokens of log(1 + relu(MLM logits));
- prompt attention (B, N): the query's mix over the pool (None without a pool).

The prefix enters through transformers' attention interface: the backbone runs under the attention implementation
"hyper_prefix_sdpa" (or "hyper_prefix_eager"), which prepends the prefix keys/values of its layer and opens their
mask columns, then calls the stock kernel. Unlike the cache route this survives gradient checkpointing.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import queue
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    AttentionInterface,
    AutoConfig,
    AutoModel,
    AutoModelForMaskedLM,
    AutoTokenizer,
    PreTrainedModel,
)
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, eager_mask, sdpa_mask
from transformers.utils import ModelOutput

from .configuration_hyper import HyperConfig
from .hyper_prompt import ADAPTER_WEIGHTS_NAME, HyperPrompt, HyperPromptConfig, PrefixKV

PREFIX_KWARG = "hyper_prefix"
SENTENCE_MODULE = "sentence_hyper.py"  # the sentence-transformers module, beside this file
# what an exported folder holds beyond a save (hyper_retrieval.hub.export): kept when a model loaded from it is saved
# again
CARRIED_OVER = ("README.md", "assets", "adapter", "handler.py", "widget.py", "widget.html")
TOKENIZE_CHUNK = 4096  # texts per tokenizer call in `tokenize`


def eager_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The BERT-family eager kernel: (B, H, T, Dh) query, (B, H, S, Dh) key/value, additive or boolean mask."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    weights = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            weights = weights.masked_fill(~attention_mask, torch.finfo(weights.dtype).min)
        else:
            weights = weights + attention_mask
    weights = nn.functional.dropout(torch.softmax(weights, dim=-1), p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _with_prefix_columns(attention_mask, prefix_mask, query: torch.Tensor, prefix_length: int):
    """Widens a (B, 1, T, S) mask (boolean, additive or None) by `prefix_length` leading columns.

    `prefix_mask` (B, L) says which prefix slots are open; None opens all of them.
    """
    batch, _, q_len, _ = query.shape
    if prefix_mask is None:
        if attention_mask is None:
            return None
        prefix_mask = torch.ones(batch, prefix_length, dtype=torch.bool, device=query.device)
    if attention_mask is None:
        attention_mask = torch.ones(batch, 1, q_len, query.shape[2], dtype=torch.bool, device=query.device)
    columns = prefix_mask.bool()[:, None, None, :].expand(attention_mask.shape[0], 1, attention_mask.shape[2], -1)
    if attention_mask.dtype != torch.bool:
        zero = torch.zeros((), dtype=attention_mask.dtype, device=query.device)
        columns = torch.where(columns, zero, torch.finfo(attention_mask.dtype).min)
    return torch.cat([columns, attention_mask], dim=-1)


def _prefix_attention(kernel):
    def attention(module, query, key, value, attention_mask, **kwargs):
        prefix: PrefixKV | None = kwargs.pop(PREFIX_KWARG, None)
        if prefix is not None:
            prefix_keys = prefix.keys[module.layer_idx].to(key.dtype)
            key = torch.cat([prefix_keys, key], dim=2)
            value = torch.cat([prefix.values[module.layer_idx].to(value.dtype), value], dim=2)
            attention_mask = _with_prefix_columns(attention_mask, prefix.mask, query, prefix_keys.shape[2])
        return kernel(module, query, key, value, attention_mask, **kwargs)

    return attention


# Process-global registries: the names are unique to this model.
AttentionInterface.register("hyper_prefix_sdpa", _prefix_attention(sdpa_attention_forward))
AttentionInterface.register("hyper_prefix_eager", _prefix_attention(eager_attention_forward))
AttentionMaskInterface.register("hyper_prefix_sdpa", sdpa_mask)
AttentionMaskInterface.register("hyper_prefix_eager", eager_mask)


def prefetch(batches: Iterator, depth: int = 8) -> Iterator:
    """Runs the `batches` generator in a background thread, `depth` items ahead (the fast tokenizer releases the
    GIL, so tokenizing overlaps with the GPU); an exception in the thread is raised here."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    done = object()

    def work() -> None:
        try:
            for item in batches:
                box.put(item)
        except BaseException as e:  # handed to the consumer
            box.put(e)
        box.put(done)

    threading.Thread(target=work, daemon=True).start()
    while (item := box.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def passage_text(doc: dict) -> str:
    """How a passage {"title", "text"} is read as one text: title and text joined by a space (BEIR's convention)."""
    return f"{doc.get('title') or ''} {doc['text']}".strip()


@dataclass
class HyperRetrieverOutput(ModelOutput):
    """embeddings (B, d) dense or (B, V) sparse; prompt_attention (B, N) and the synthesizer's prompt_logits (B, N)
    or None; last_hidden_state (B, T, d)."""

    embeddings: torch.Tensor | None = None
    prompt_attention: torch.Tensor | None = None
    prompt_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class HyperRetrieverModel(PreTrainedModel):
    """Query encoder with a (hyper-)prompt prefix, passage encoder without; BEIR's `encode_queries/encode_corpus`."""

    config_class = HyperConfig
    base_model_prefix = "hyper_retriever"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: HyperConfig):
        super().__init__(config)
        self.query_encoder = self._build_backbone(config)
        self.passage_encoder = None if config.share_encoders else self._build_backbone(config)
        self.hyper_prompt = None
        if config.hyper_prompt is not None:
            prompt_config = HyperPromptConfig.from_dict(config.hyper_prompt).fill_from_backbone(config.backbone_config)
            self.hyper_prompt = HyperPrompt(prompt_config)
            config.hyper_prompt = prompt_config.to_dict()
        self.tokenizer = None
        self.post_init()
        self.apply_freezing()

    # ----------------------------------------------------------------- construction
    @staticmethod
    def _build_backbone(config: HyperConfig) -> PreTrainedModel:
        backbone_config = config.backbone_config
        if backbone_config is None:
            raise ValueError("HyperConfig.backbone_config is required (use HyperRetrieverModel.from_backbone)")
        auto_class = AutoModelForMaskedLM if config.representation == "sparse" else AutoModel
        if config.representation == "sparse" and type(backbone_config) not in auto_class._model_mapping:
            raise ValueError(f"representation='sparse' needs an MLM head; {backbone_config.model_type} has none")
        implementation = config.attention_backend
        if config.hyper_prompt is not None:
            model_class = auto_class._model_mapping[type(backbone_config)]
            if not getattr(model_class, "_supports_attention_backend", False):
                raise ValueError(
                    f"{model_class.__name__} does not route attention through transformers' attention interface, so "
                    "a prompt prefix cannot be injected; use a BERT/RoBERTa/XLM-R backbone or hyper_prompt=None"
                )
            implementation = f"hyper_prefix_{config.attention_backend}"
        # A copy: from_config records the attention implementation on the config object it is given.
        backbone = auto_class.from_config(copy.deepcopy(backbone_config), attn_implementation=implementation)
        if getattr(backbone, "pooler", None) is not None:
            # Its output is never used: dropping it saves compute and keeps DDP from waiting for its gradients.
            backbone.pooler = None
        return backbone

    @classmethod
    def from_backbone(
        cls, name_or_path: str, hyper_prompt: HyperPromptConfig | None = None, **config_kwargs
    ) -> HyperRetrieverModel:
        """Builds the model around pretrained encoder weights (a local folder or a Hub id), tokenizer included.

        `config_kwargs` are `HyperConfig` fields (representation, pooling, share_encoders, ...). The sparse kind loads
        the checkpoint's MLM head and refuses a checkpoint without one. A Hub id loads through the Hugging Face cache
        (offline where its files are there: scripts/setup_env.sh places the pip-shipped ones), and the saved configs
        name it as given.
        """
        name_or_path = str(name_or_path)
        backbone_config = AutoConfig.from_pretrained(name_or_path)
        prompt = hyper_prompt.to_dict() if hyper_prompt is not None else None
        if prompt is not None and prompt.get("base_model_name_or_path") is None:
            prompt["base_model_name_or_path"] = name_or_path
        model = cls(HyperConfig(backbone_config=backbone_config, hyper_prompt=prompt, **config_kwargs))
        auto_class = AutoModelForMaskedLM if model.config.representation == "sparse" else AutoModel
        source, info = auto_class.from_pretrained(name_or_path, output_loading_info=True, dtype=torch.float32)
        if info["missing_keys"]:
            raise ValueError(
                f"{name_or_path}: the checkpoint lacks {sorted(info['missing_keys'])[:5]} "
                f"({len(info['missing_keys'])} tensors); representation={model.config.representation!r} needs "
                + ("an MLM head (e.g. a BertForMaskedLM checkpoint)" if auto_class is AutoModelForMaskedLM else "them")
            )
        state = source.state_dict()
        for encoder in (model.query_encoder, model.passage_encoder):
            if encoder is not None:
                wanted = encoder.state_dict().keys()  # all of them (strict load), less the dropped pooler
                encoder.load_state_dict({k: v for k, v in state.items() if k in wanted})
        model.tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        return model

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """`PreTrainedModel.from_pretrained`, the config's freezing applied again (loading makes every parameter
        trainable), then the tokenizer saved beside the weights (if any)."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        model.apply_freezing()
        hub_kwargs = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "local_files_only") if k in kwargs}
        try:
            # The caller's choice: a tokenizer whose config points at code beside it runs that code only if asked.
            # config=: the tokenizer's class is in tokenizer_config.json; without it AutoTokenizer rereads
            # config.json through a class that does not know model_type hyper_retriever, and warns.
            model.tokenizer = AutoTokenizer.from_pretrained(
                pretrained_model_name_or_path,
                config=model.config,
                trust_remote_code=kwargs.get("trust_remote_code", False),
                **hub_kwargs,
            )
        except (OSError, ValueError):
            model.tokenizer = None  # encode_* then asks for one
        return loaded

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Weights (safetensors only), config with auto_map, the code files, the tokenizer, and what
        sentence-transformers needs (modules.json, config_sentence_transformers.json, sentence_hyper.py): every saved
        folder loads through AutoModel, sentence-transformers and pipeline alike. Saved from a model loaded from a
        folder that holds a card, assets, the adapter, the endpoint handler or the widget page, those come along."""
        kwargs["safe_serialization"] = True
        super().save_pretrained(save_directory, *args, **kwargs)
        target = Path(save_directory)
        sparse = self.config.representation == "sparse"
        (target / "modules.json").write_text(json.dumps(
            [{"idx": 0, "name": "0", "path": "", "type": "sentence_hyper.HyperSentenceEncoder"}], indent=2))
        (target / "config_sentence_transformers.json").write_text(json.dumps({
            "model_type": "SparseEncoder" if sparse else "SentenceTransformer",
            "prompts": {"query": "", "document": ""}, "default_prompt_name": None,
            "similarity_fn_name": "dot"}, indent=2))
        source = Path(self.name_or_path) if self.name_or_path else None
        folders = [Path(__file__).resolve().parent, *([source] if source is not None and source.is_dir() else [])]
        module = next((f / SENTENCE_MODULE for f in folders if (f / SENTENCE_MODULE).is_file()), None)
        if module is not None and module.resolve() != (target / SENTENCE_MODULE).resolve():
            shutil.copyfile(module, target / SENTENCE_MODULE)
        if source is not None and source.is_dir() and source.resolve() != target.resolve():
            for name in CARRIED_OVER:
                if (source / name).is_dir():
                    shutil.copytree(source / name, target / name, dirs_exist_ok=True)
                elif (source / name).is_file():
                    shutil.copyfile(source / name, target / name)
        if self.tokenizer is not None:
            # the tokenizer's limit is the model's: pipeline(..., truncation=True) then cuts where encode_* do
            tokenizer = copy.copy(self.tokenizer)
            tokenizer.model_max_length = self.config.max_seq_length
            tokenizer.save_pretrained(save_directory)

    def apply_freezing(self) -> None:
        """Sets requires_grad from the config: frozen query backbone and/or frozen separate passage encoder."""
        self.query_encoder.requires_grad_(not self.config.freeze_query_backbone)
        if self.passage_encoder is not None:
            self.passage_encoder.requires_grad_(not self.config.freeze_passage_encoder)

    def _init_weights(self, module: nn.Module) -> None:
        # Backbones initialise themselves (they are PreTrainedModels); only the prompt modules are ours.
        if isinstance(module, HyperPrompt):
            module.reset_pool()
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ----------------------------------------------------------------- adapter (PEFT-style)
    def save_adapter(self, directory: str | os.PathLike) -> None:
        """Writes the hyper-prompt alone: hyper_prompt_config.json + hyper_prompt.safetensors."""
        if self.hyper_prompt is None:
            raise ValueError("this model has no hyper-prompt to save (config.hyper_prompt is None)")
        from safetensors.torch import save_file

        self.hyper_prompt.config.save_pretrained(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.hyper_prompt.state_dict().items()}
        save_file(state, os.path.join(directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})

    def attach_adapter(self, directory: str | os.PathLike) -> HyperRetrieverModel:
        """Attaches a saved hyper-prompt to this model's query encoder (replacing any); returns self."""
        from safetensors.torch import load_file

        prompt_config = HyperPromptConfig.from_pretrained(directory).fill_from_backbone(self.config.backbone_config)
        weights_path = os.path.join(directory, ADAPTER_WEIGHTS_NAME)
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"{weights_path}: adapter weights missing")
        prompt = HyperPrompt(prompt_config).to(self.device)
        try:
            prompt.load_state_dict(load_file(weights_path, device=str(self.device)))
        except RuntimeError as e:
            raise ValueError(f"{weights_path}: does not match {prompt_config} ({e})") from e
        if self.hyper_prompt is None:
            self.query_encoder.set_attn_implementation(f"hyper_prefix_{self.config.attention_backend}")
        self.hyper_prompt = prompt
        self.config.hyper_prompt = prompt_config.to_dict()
        return self

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        is_query: bool = True,
        prefix_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> HyperRetrieverOutput:
        """Encodes (B, T) token ids as queries (with the prompt prefix) or passages (without).

        `prefix_mask` (B, L) bool chooses which prefix slots the query may attend to (default: all); closing all of
        them reproduces the plain backbone, which is how the injection is tested.
        """
        if input_ids.shape[-1] > self.max_window_length():
            raise ValueError(f"{input_ids.shape[-1]} tokens exceed the backbone's {self.max_window_length()} "
                             "positions; truncate the input (tokenizer(..., truncation=True), "
                             "pipeline(..., truncation=True))")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        encoder = self.query_encoder if is_query or self.passage_encoder is None else self.passage_encoder
        prompt_attention = prompt_logits = None
        if is_query and self.hyper_prompt is not None:
            token_embeddings = self.query_encoder.get_input_embeddings()(input_ids)
            prefix, prompt_attention, prompt_logits = self.hyper_prompt(token_embeddings, attention_mask)
            kwargs[PREFIX_KWARG] = prefix._replace(mask=prefix_mask)
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        if self.config.representation == "sparse":
            weights = torch.log1p(torch.relu(out.logits)) * attention_mask.unsqueeze(-1).to(out.logits.dtype)
            return HyperRetrieverOutput(embeddings=weights.max(dim=1).values, prompt_attention=prompt_attention,
                                        prompt_logits=prompt_logits)
        hidden = out.last_hidden_state
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        if self.config.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return HyperRetrieverOutput(embeddings=pooled, prompt_attention=prompt_attention, prompt_logits=prompt_logits,
                                    last_hidden_state=hidden)

    # ----------------------------------------------------------------- parameter groups
    def parameter_groups(self, backbone_lr: float, prompt_lr: float, weight_decay: float = 0.01) -> list[dict]:
        """AdamW groups: backbone with decay, backbone without (biases, LayerNorm), prompt modules (no decay).

        Only trainable parameters; empty groups are dropped. Each group carries a "name".
        """
        groups = {"backbone": [], "backbone_no_decay": [], "hyper_prompt": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("hyper_prompt."):
                groups["hyper_prompt"].append(param)
            elif name.endswith("bias") or "LayerNorm" in name or "layer_norm" in name or param.ndim == 1:
                groups["backbone_no_decay"].append(param)
            else:
                groups["backbone"].append(param)
        settings = {
            "backbone": (backbone_lr, weight_decay),
            "backbone_no_decay": (backbone_lr, 0.0),
            "hyper_prompt": (prompt_lr, 0.0),
        }
        return [
            {"name": name, "params": params, "lr": settings[name][0], "weight_decay": settings[name][1]}
            for name, params in groups.items()
            if params
        ]

    # ----------------------------------------------------------------- BEIR-style encoding
    def encode_queries(
        self,
        queries: list[str],
        batch_size: int = 32,
        show_progress_bar: bool = False,
        return_prompt_attention: bool = False,
        convert_to_tensor: bool = False,
        normalize_embeddings: bool = False,
    ):
        """Queries -> (n, d) float32 array (dense) or (n, V) scipy CSR matrix (sparse), with the prompt prefix; with
        `return_prompt_attention`, the pair (vectors, (n, N) attention over the pool or None), from one pass.
        `convert_to_tensor` gives a torch tensor (sparse: a CSR tensor), `normalize_embeddings` unit-length rows;
        any other keyword is an error.

        An empty list gives an empty (0, dim) result; an empty or blank query is an error; texts longer than
        `config.max_seq_length` tokens are truncated.
        """
        for i, query in enumerate(self._check_texts(queries, "queries")):
            if not query.strip():
                raise ValueError(f"queries[{i}] is empty: an empty query has nothing to retrieve with")
        vectors, attention = self._encode(queries, True, batch_size, show_progress_bar)
        vectors = self._finish(vectors, convert_to_tensor, normalize_embeddings)
        return (vectors, attention) if return_prompt_attention else vectors

    def encode_corpus(
        self, corpus: list[dict] | list[str], batch_size: int = 32, show_progress_bar: bool = False,
        convert_to_tensor: bool = False, normalize_embeddings: bool = False,
    ) -> np.ndarray:
        """Passages ({"title", "text"} dicts or strings) -> (n, d) or (n, V) CSR, without prompt; the keywords as
        in `encode_queries`.

        A title is joined to its text with a space (BEIR's convention); an empty passage is encoded as is.
        """
        vectors = self._encode(self.passage_texts(corpus), False, batch_size, show_progress_bar)[0]
        return self._finish(vectors, convert_to_tensor, normalize_embeddings)

    @staticmethod
    def _finish(vectors, convert_to_tensor: bool, normalize: bool):
        """Encoded vectors (array or CSR), scaled to unit length if asked, as a torch tensor if asked."""
        sparse = hasattr(vectors, "tocsr")
        if normalize:
            norms = np.sqrt(np.asarray(vectors.multiply(vectors).sum(axis=1)).reshape(-1)) if sparse else (
                np.linalg.norm(vectors, axis=1))
            scale = 1.0 / np.maximum(norms, 1e-12)
            vectors = vectors.multiply(scale[:, None]).tocsr() if sparse else vectors * scale[:, None]
        if not convert_to_tensor:
            return vectors
        if sparse:
            return torch.sparse_csr_tensor(vectors.indptr, vectors.indices, vectors.data, size=vectors.shape)
        return torch.from_numpy(np.ascontiguousarray(vectors))

    def passage_texts(self, corpus: list[dict] | list[str]) -> list[str]:
        """What `encode_corpus` encodes: a dict's title and text joined by a space, or the string itself."""
        texts = []
        for i, doc in enumerate(self._check_texts(corpus, "corpus", allow_dicts=True)):
            if isinstance(doc, dict):
                if "text" not in doc:
                    raise ValueError(f"corpus[{i}] has no 'text' key (keys: {sorted(doc)})")
                doc = passage_text(doc)
            texts.append(doc)
        return texts

    def score_passages(
        self, query: str, passages: list[dict] | list[str], windows: str = "max", stride: int | None = None,
        batch_size: int = 32,
    ) -> np.ndarray:
        """The query's score (dot product) of each passage, (n,) float32. With windows="max" (MaxP) a passage
        longer than `config.max_seq_length` tokens is read in overlapping windows (see `tokenize_windows`) and
        scores its best one; windows="first" reads its first window only, as `encode_corpus` does."""
        if windows not in ("first", "max"):
            raise ValueError(f"windows={windows!r}: expected 'first' or 'max'")
        query_vector = self.encode_queries([query])
        ids, offsets, doc = self.tokenize_windows(passages, stride=stride, first_only=windows == "first")
        window_vectors = self.encode_tokenized(ids, offsets, False, batch_size)[0]
        window_scores = np.asarray((window_vectors @ query_vector.T).todense() if self.config.representation ==
                                   "sparse" else window_vectors @ query_vector.T, dtype=np.float32).reshape(-1)
        scores = np.full(len(passages), -np.inf, dtype=np.float32)
        np.maximum.at(scores, doc, window_scores)
        return scores

    def prompt_attention(self, queries: list[str], batch_size: int = 32, show_progress_bar: bool = False) -> np.ndarray:
        """Queries -> (n, N) attention over the prompt pool: which prompts each query mixed."""
        if self.hyper_prompt is None:
            raise ValueError("this model has no prompt pool (config.hyper_prompt is None)")
        self._check_texts(queries, "queries")
        return self._encode(queries, True, batch_size, show_progress_bar)[1]

    @torch.no_grad()
    def calibrate_synthesizer(self, queries: list[str], batch_size: int = 256) -> int:
        """Sets the prompt synthesizer's running statistics (standardized and cosine forms) to their exact values over
        `queries` (e.g. a sample of the training queries; train.py does this before each evaluation and the final
        save). Returns the number of queries used (0 for a synthesizer without statistics)."""
        synthesizer = self.hyper_prompt.synthesizer if self.hyper_prompt is not None else None
        if synthesizer is None or not queries:
            return 0
        embed = self.query_encoder.get_input_embeddings()
        batches = self._store_batches(*self.tokenize(self._check_texts(queries, "queries")), batch_size)
        return synthesizer.calibrate(
            (embed(ids.to(self.device)), mask.to(self.device)) for _, ids, mask in batches
        )

    @staticmethod
    def _check_texts(texts, what: str, allow_dicts: bool = False) -> list:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
            raise TypeError(f"{what} must be a list of {'dicts or ' if allow_dicts else ''}strings, got {type(texts)}")
        allowed = (str, dict) if allow_dicts else (str,)
        for i, text in enumerate(texts):
            if not isinstance(text, allowed):
                expected = " or ".join(a.__name__ for a in allowed)
                raise TypeError(f"{what}[{i}] is a {type(text).__name__}, expected {expected}")
        return list(texts)

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts -> a flat token store: ids (total tokens,) int32 and offsets (n + 1,) int64; text i is
        ids[offsets[i]:offsets[i + 1]], truncated at `config.max_seq_length`. Tokenized in chunks of
        TOKENIZE_CHUNK texts per call (the fast tokenizer works in parallel within a call)."""
        if self.tokenizer is None:
            raise ValueError("no tokenizer: load with from_pretrained/from_backbone or set model.tokenizer")
        ids, lengths = [], []
        for start in range(0, len(texts), TOKENIZE_CHUNK):
            chunk = self.tokenizer(
                texts[start : start + TOKENIZE_CHUNK],
                truncation=True,
                max_length=self.config.max_seq_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )["input_ids"]
            lengths.append(np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk)))
            ids.append(np.fromiter(itertools.chain.from_iterable(chunk), dtype=np.int32, count=int(lengths[-1].sum())))
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)
        return (np.concatenate(ids) if ids else np.zeros(0, np.int32)), offsets.astype(np.int64)

    def max_window_length(self) -> int:
        """The most tokens one text (a passage window) may hold: the backbone's position table."""
        limit = self.config.backbone_config.max_position_embeddings
        if self.config.backbone_config.model_type in ("roberta", "xlm-roberta", "camembert"):
            limit -= self.config.backbone_config.pad_token_id + 1  # their positions start after the padding index
        return limit

    def tokenize_windows(
        self, corpus: list[dict] | list[str], window_length: int | None = None, stride: int | None = None,
        first_only: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Passages -> a token store of overlapping windows (MaxP): ids (total tokens,) int32, offsets
        (n_windows + 1,) int64 as in `tokenize`, and doc (n_windows,) int64, the passage row of each window
        (non-decreasing: a passage's windows are consecutive, first window first).

        Each window is the special tokens around the title's tokens (repeated in every window) and a slice of the
        text's tokens; `window_length` (default `config.max_seq_length`) counts them all and may not exceed
        `max_window_length()`. Window starts advance by `stride` text tokens (default half the window; never
        more than the room a window has, so every token is in some window). A passage that fits is one window,
        and `first_only` keeps only first windows (FirstP: the truncation `tokenize` does).
        """
        if self.tokenizer is None:
            raise ValueError("no tokenizer: load with from_pretrained/from_backbone or set model.tokenizer")
        length = window_length or self.config.max_seq_length
        if length > self.max_window_length():
            raise ValueError(f"window_length={length} exceeds the backbone's limit of {self.max_window_length()} "
                             f"positions ({self.config.backbone_config.model_type}); use at most that")
        probe = self.tokenizer("hello")["input_ids"]
        bare = self.tokenizer("hello", add_special_tokens=False)["input_ids"]
        start = next(i for i in range(len(probe)) if probe[i : i + len(bare)] == bare)
        head, tail = probe[:start], probe[start + len(bare) :]
        room_total = length - len(head) - len(tail)  # title + text tokens per window
        stride = stride or max(1, room_total // 2)
        if stride < 1 or stride > room_total:
            raise ValueError(f"stride={stride}: expected 1..{room_total} (the tokens a window of {length} holds)")
        documents = [d if isinstance(d, dict) else {"text": d} for d in self._check_texts(corpus, "corpus", True)]
        for i, doc in enumerate(documents):
            if "text" not in doc:
                raise ValueError(f"corpus[{i}] has no 'text' key (keys: {sorted(doc)})")
        ids, lengths, docs = [], [], []
        for begin in range(0, len(documents), TOKENIZE_CHUNK):
            chunk = documents[begin : begin + TOKENIZE_CHUNK]
            titles, texts = (self.tokenizer([d.get(key) or "" for d in chunk], add_special_tokens=False,
                                            verbose=False)["input_ids"] for key in ("title", "text"))
            windows = []
            for row, (title, text) in enumerate(zip(titles, texts, strict=True), start=begin):
                title = title[: room_total // 2]  # a title never takes more than half a window
                room = room_total - len(title)
                step = min(stride, room)
                count = 1 if first_only else 1 + max(0, -(-(len(text) - room) // step))
                windows += [head + title + text[w * step : w * step + room] + tail for w in range(count)]
                docs.append(np.full(count, row, dtype=np.int64))
            lengths.append(np.fromiter(map(len, windows), dtype=np.int64, count=len(windows)))
            ids.append(np.fromiter(itertools.chain.from_iterable(windows), np.int32, int(lengths[-1].sum())))
        offsets = np.concatenate([[0], np.cumsum(np.concatenate(lengths))]) if lengths else np.zeros(1, np.int64)
        return (np.concatenate(ids) if ids else np.zeros(0, np.int32), offsets.astype(np.int64),
                np.concatenate(docs) if docs else np.zeros(0, np.int64))

    def _store_batches(self, ids: np.ndarray, offsets: np.ndarray, batch_size: int) -> Iterator:
        """Yields (rows, input ids (B, T), attention mask (B, T)) over a token store, longest first, padded per batch:
        sorted by token count, batches carry little padding."""
        lengths = np.diff(offsets)
        order = np.argsort(-lengths, kind="stable")
        pad_id = self.tokenizer.pad_token_id or 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            mask = np.arange(lengths[rows[0]])[None, :] < lengths[rows][:, None]
            input_ids = np.full(mask.shape, pad_id, dtype=np.int64)
            input_ids[mask] = np.concatenate([ids[offsets[r] : offsets[r + 1]] for r in rows])
            yield rows, torch.from_numpy(input_ids), torch.from_numpy(mask.astype(np.int64))

    def _encode(self, texts: list[str], is_query: bool, batch_size: int, show_progress_bar: bool):
        """Texts -> (embeddings in input order, prompt attention or None)."""
        return self.encode_tokenized(*self.tokenize(texts), is_query, batch_size, show_progress_bar)

    @torch.no_grad()
    def encode_tokenized(
        self,
        ids: np.ndarray,
        offsets: np.ndarray,
        is_query: bool = False,
        batch_size: int = 32,
        show_progress_bar: bool = False,
    ):
        """A token store (see `tokenize`; e.g. a cached, memory-mapped one) -> (embeddings (n, d) or CSR (n, V) in
        row order, prompt attention (n, N) or None). Token-length-sorted batches, no grad."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        was_training = self.training
        self.eval()
        sparse = self.config.representation == "sparse"
        if sparse:
            from scipy import sparse as scipy_sparse
        rows, embeddings, attentions = [], [], []
        bar = None
        if show_progress_bar:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(offsets) - 1, desc="queries" if is_query else "passages", unit="text")
        on_gpu = self.device.type == "cuda"
        batches = self._store_batches(ids, offsets, batch_size)
        for batch_rows, input_ids, mask in prefetch(batches) if on_gpu else batches:
            if on_gpu:  # batches are padded ahead in a thread; copies overlap with compute
                input_ids, mask = input_ids.pin_memory(), mask.pin_memory()
            out = self(
                input_ids.to(self.device, non_blocking=on_gpu),
                mask.to(self.device, non_blocking=on_gpu),
                is_query=is_query,
            )
            # Dense vectors stay on the device until the end (one copy back); sparse ones become CSR at once.
            emb = out.embeddings.float()
            embeddings.append(scipy_sparse.csr_matrix(emb.cpu().numpy()) if sparse else emb)
            if out.prompt_attention is not None:
                attentions.append(out.prompt_attention.float())
            rows.append(batch_rows)
            if bar is not None:
                bar.update(len(batch_rows))
        if bar is not None:
            bar.close()
        self.train(was_training)
        if not embeddings:
            empty = np.zeros((0, self._output_dim()), dtype=np.float32)
            no_attention = None
            if is_query and self.hyper_prompt is not None:
                no_attention = np.zeros((0, self.hyper_prompt.config.pool_size), dtype=np.float32)
            return (scipy_sparse.csr_matrix(empty) if sparse else empty), no_attention
        inverse = np.argsort(np.concatenate(rows), kind="stable")
        stacked = scipy_sparse.vstack(embeddings, format="csr") if sparse else torch.cat(embeddings).cpu().numpy()
        return stacked[inverse], (torch.cat(attentions).cpu().numpy()[inverse] if attentions else None)

    def _output_dim(self) -> int:
        backbone = self.config.backbone_config
        return backbone.vocab_size if self.config.representation == "sparse" else backbone.hidden_size


HyperConfig.register_for_auto_class()
HyperRetrieverModel.register_for_auto_class("AutoModel")
