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
from .hyper_prompt import ADAPTER_WEIGHTS_NAME, HyperPrompt, HyperPromptConfig, PrefixKV

PREFIX_KWARG = "hyper_prefix"
SENTENCE_MODULE = "sentence_hyper.py"  # the sentence-transformers module, beside this file
# what an exported folder holds beyond a save (hyper_retrieval.hub.export): kept when a model loaded from it is saved
# again


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
