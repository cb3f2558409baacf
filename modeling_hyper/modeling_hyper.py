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

import contextlib
import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

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
from .encoding_hyper import HyperEncodingMixin
from .hyper_prompt import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, HyperPrompt, HyperPromptConfig, PrefixKV

PREFIX_KWARG = "hyper_prefix"
SENTENCE_MODULE = "sentence_hyper.py"  # the sentence-transformers module, beside this file
DEFAULT_ADAPTER = "default"  # the name of a model's own hyper-prompt (PEFT's default adapter name)


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


def _always_a_mask(mask_function):
    """The mask function, never skipping the mask of an unpadded batch: deciding that reads ``padding_mask.all()``
    back from the device at every forward, which stalls a GPU's queue of kernels in training and encoding."""
    def mask(*args, **kwargs):
        return mask_function(*args, **kwargs | {"allow_is_bidirectional_skip": False})

    return mask


# Process-global registries: the names are unique to this model.
AttentionInterface.register("hyper_prefix_sdpa", _prefix_attention(sdpa_attention_forward))
AttentionInterface.register("hyper_prefix_eager", _prefix_attention(eager_attention_forward))
AttentionMaskInterface.register("hyper_prefix_sdpa", _always_a_mask(sdpa_mask))
AttentionMaskInterface.register("hyper_prefix_eager", eager_mask)


def _adapter_file(source: str | os.PathLike, name: str, subfolder: str = "", **hub_kwargs) -> str:
    """The path of an adapter's file `name`: in the folder `source` (or its `subfolder`), or downloaded from the Hub
    repository `source` (through the Hugging Face cache). FileNotFoundError naming the file when it is not there."""
    from transformers.utils import cached_file

    folder = Path(source)
    if folder.is_dir() or folder.is_absolute() or str(source).startswith((".", "~")) or folder.exists():
        if not (folder / subfolder / name).is_file():
            raise FileNotFoundError(f"{folder / subfolder / name}: no such file (not a saved hyper-prompt adapter)")
        return str(folder / subfolder / name)
    try:
        return cached_file(str(source), name, subfolder=subfolder, **hub_kwargs)
    except OSError as e:
        raise FileNotFoundError(f"{source}/{subfolder + '/' if subfolder else ''}{name}: not found locally or on the "
                                f"Hub ({e})") from e


@dataclass
class HyperRetrieverOutput(ModelOutput):
    """embeddings (B, d) dense or (B, V) sparse; prompt_attention (B, N) and the synthesizer's prompt_logits (B, N)
    or None; last_hidden_state (B, T, d)."""

    embeddings: torch.Tensor | None = None
    prompt_attention: torch.Tensor | None = None
    prompt_logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None


class HyperRetrieverModel(HyperEncodingMixin, PreTrainedModel):
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
        self._adapters: dict[str, HyperPrompt] = {}
        self._active_adapter: str | None = None
        if config.hyper_prompt is not None:
            prompt_config = HyperPromptConfig.from_dict(config.hyper_prompt).fill_from_backbone(config.backbone_config)
            # the model's own adapter trains (or trained) with this backbone, frozen or not
            if prompt_config.base_model_name_or_path is None:
                prompt_config.base_model_name_or_path = config.backbone_name_or_path
            if prompt_config.backbone_frozen is None:
                prompt_config.backbone_frozen = config.freeze_query_backbone
            self.hyper_prompt = HyperPrompt(prompt_config)
            self._adapters[DEFAULT_ADAPTER], self._active_adapter = self.hyper_prompt, DEFAULT_ADAPTER
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
        config_kwargs.setdefault("backbone_name_or_path", name_or_path)
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
        folder loads through AutoModel, sentence-transformers and pipeline alike. Only the network: the card, the
        adapter folder, the endpoint handler and the widget page are written by the hub package's export."""
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

    # ----------------------------------------------------------------- adapters (PEFT-style)
    # Several hyper-prompts may be loaded on one backbone; the active one is `self.hyper_prompt` (a submodule: saved,
    # moved and trained with the model), the others wait in `self._adapters` (a plain dict: none of that).
    @property
    def active_adapter(self) -> str | None:
        """The name of the hyper-prompt the query encoder uses now; None: the plain backbone."""
        return self._active_adapter

    def active_adapters(self) -> list[str]:
        """The active adapter as a list (transformers' name); empty for the plain backbone."""
        return [self._active_adapter] if self._active_adapter is not None else []

    @property
    def adapter_names(self) -> list[str]:
        """Every loaded adapter, in loading order."""
        return list(self._adapters)

    def _activate(self, name: str | None) -> None:
        prompt = self._adapters[name] if name is not None else None
        if prompt is not None:
            prompt.to(self.device).train(self.training)
            if self.hyper_prompt is None:
                self.query_encoder.set_attn_implementation(f"hyper_prefix_{self.config.attention_backend}")
        self.hyper_prompt = prompt
        self._active_adapter = name
        self.config.hyper_prompt = prompt.config.to_dict() if prompt is not None else None

    def set_adapter(self, adapter_name: str | None) -> None:
        """Makes a loaded adapter the one queries use (None: the plain backbone). Passages never use one."""
        if adapter_name is not None and adapter_name not in self._adapters:
            raise ValueError(f"no adapter named {adapter_name!r}; loaded: {self.adapter_names}")
        self._activate(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        """Unloads an adapter; deleting the active one leaves the plain backbone active."""
        if adapter_name not in self._adapters:
            raise ValueError(f"no adapter named {adapter_name!r}; loaded: {self.adapter_names}")
        del self._adapters[adapter_name]
        if adapter_name == self._active_adapter:
            self._activate(None)

    @contextlib.contextmanager
    def using_adapter(self, adapter_name: str | None):
        """`with model.using_adapter(name):` the adapter is active inside, the previous one again after."""
        previous = self._active_adapter
        self.set_adapter(adapter_name)
        try:
            yield self
        finally:
            self._activate(previous)

    def save_adapter(self, directory: str | os.PathLike, adapter_name: str | None = None) -> None:
        """Writes a hyper-prompt alone (the active one by default): hyper_prompt_config.json +
        hyper_prompt.safetensors. Its config names the backbone and whether that was frozen in training."""
        name = adapter_name if adapter_name is not None else self._active_adapter
        if name is None or name not in self._adapters:
            raise ValueError("this model has no hyper-prompt to save (config.hyper_prompt is None)" if name is None
                             else f"no adapter named {name!r}; loaded: {self.adapter_names}")
        self._adapters[name].save_pretrained(directory)

    def _read_adapter(self, source: str | os.PathLike, **hub_kwargs) -> HyperPrompt:
        """A saved hyper-prompt (a folder or a Hub repository) built for this backbone; a shape that does not fit is
        an error naming both."""
        from safetensors.torch import load_file

        prompt_config = HyperPromptConfig.from_pretrained(os.path.dirname(_adapter_file(source, ADAPTER_CONFIG_NAME,
                                                                                        **hub_kwargs)))
        backbone = self.config.backbone_config
        try:
            prompt_config = prompt_config.fill_from_backbone(backbone)
        except ValueError as e:
            raise ValueError(f"{source}: the adapter (trained on {prompt_config.base_model_name_or_path!r}, hidden "
                             f"size {prompt_config.token_dim}) does not fit this model's backbone "
                             f"({self.config.backbone_name_or_path!r}, hidden size {backbone.hidden_size}): {e}") from e
        weights_path = _adapter_file(source, ADAPTER_WEIGHTS_NAME, **hub_kwargs)
        prompt = HyperPrompt(prompt_config)
        try:
            prompt.load_state_dict(load_file(weights_path))
        except RuntimeError as e:
            raise ValueError(f"{weights_path}: does not match {prompt_config} ({e})") from e
        return prompt

    def load_adapter(self, adapter_path: str | os.PathLike, adapter_name: str | None = None, *, subfolder: str = "",
                     revision: str | None = None, token: str | None = None, local_files_only: bool = False) -> str:
        """Loads a hyper-prompt saved by `save_adapter` (a folder or a Hub repository, or its `subfolder`: e.g.
        "adapter" of an exported model) under `adapter_name` (default "default") beside those loaded already; it
        becomes active only if none is (then `set_adapter`, or `encode_queries(..., adapter=name)` per call).
        Returns the name.

        Only an adapter trained with its query backbone frozen works on another model's backbone, and only on the
        backbone it was trained on: anything else is refused, naming what does not match. (To put an adapter back
        on the very model it was trained with, use `attach_adapter`.)
        """
        name = adapter_name if adapter_name is not None else DEFAULT_ADAPTER
        if name in self._adapters:
            raise ValueError(f"an adapter named {name!r} is loaded already (loaded: {self.adapter_names}); pass "
                             "another adapter_name or delete_adapter it first")
        prompt = self._read_adapter(adapter_path, subfolder=subfolder, revision=revision, token=token,
                                    local_files_only=local_files_only)
        if prompt.config.backbone_frozen is not True:
            why = ("was trained with its query backbone unfrozen" if prompt.config.backbone_frozen is False else
                   "does not record whether its query backbone was frozen in training (saved by an older version)")
            raise ValueError(f"{adapter_path}: this adapter {why}, so it needs its own backbone: load the whole model "
                             "it was trained with (AutoModel.from_pretrained of that run's final/ or best/ folder) "
                             "instead of loading the adapter onto this one")
        theirs, ours = prompt.config.base_model_name_or_path, self.config.backbone_name_or_path
        if theirs is not None and ours is not None and theirs != ours:
            raise ValueError(f"{adapter_path}: the adapter was trained on the backbone {theirs!r}, this model's is "
                             f"{ours!r}; load it onto {theirs!r}")
        self._adapters[name] = prompt
        if self._active_adapter is None:
            self._activate(name)
        return name

    def attach_adapter(self, directory: str | os.PathLike) -> HyperRetrieverModel:
        """Puts a saved hyper-prompt on this model's query encoder as its own ("default", replacing any: e.g. back on
        the model it was trained with, whatever its backbone's training), and makes it active; returns self."""
        self._adapters[DEFAULT_ADAPTER] = self._read_adapter(directory)
        self._activate(DEFAULT_ADAPTER)
        return self

    # ----------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        is_query: bool = True,
        prefix_mask: torch.Tensor | None = None,
        task_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> HyperRetrieverOutput:
        """Encodes (B, T) token ids as queries (with the prompt prefix) or passages (without).

        `prefix_mask` (B, L) bool chooses which prefix slots the query may attend to (default: all); closing all of
        them reproduces the plain backbone, which is how the injection is tested. `task_ids` (B,) long: each query's
        task for a pool routed by task (synthesizer='task'; -1: none of its tasks), ignored by the other pools.
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
            prefix, prompt_attention, prompt_logits = self.hyper_prompt(token_embeddings, attention_mask, task_ids)
            kwargs[PREFIX_KWARG] = prefix._replace(mask=prefix_mask)
        out = encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids, **kwargs)
        if self.config.representation == "sparse":
            # SPLADE's max over tokens of log(1 + relu(logit)), taken as log(1 + relu(max logit)): the same value
            # and gradient (both are monotonic). Padding is masked in place (the head's backward needs not its own
            # output) and amax reduces without indices: ~6x less time than three passes over the (B, T, V) logits.
            logits = out.logits.masked_fill_(~attention_mask.bool().unsqueeze(-1), float("-inf"))
            weights = torch.log1p(torch.relu(logits.amax(dim=1)))
            return HyperRetrieverOutput(embeddings=weights, prompt_attention=prompt_attention,
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


HyperConfig.register_for_auto_class()
HyperRetrieverModel.register_for_auto_class("AutoModel")
