"""The hyper-prompt adapter: prompt pool, prefix projection (P-tuning v2) and prompt synthesizer (ATTEMPT-style).

Shapes: B queries of T tokens, hidden size d, N prompts of L virtual tokens, `num_layers` layers with H heads of
size d / H. For every query the synthesizer gives an attention a (B, N) over the pool; the projected prompts are
mixed with it into one prefix: keys and values of shape (num_layers, B, H, L, d / H), prepended at every layer.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
from torch import nn

ADAPTER_CONFIG_NAME = "hyper_prompt_config.json"
ADAPTER_WEIGHTS_NAME = "hyper_prompt.safetensors"


@dataclass
class HyperPromptConfig:
    """PEFT-style settings of the prompt pool; field names follow peft's PromptLearningConfig where they apply."""

    num_virtual_tokens: int = field(default=1, metadata={"help": "Prompt length L: virtual tokens per prompt."})
    pool_size: int = field(
        default=5, metadata={"help": "N prompts in the pool; 1 gives the single shared prefix baseline."}
    )
    num_layers: int | None = field(default=None, metadata={"help": "Backbone layers; filled from the backbone."})
    num_attention_heads: int | None = field(default=None, metadata={"help": "Backbone heads; filled from it."})
    token_dim: int | None = field(default=None, metadata={"help": "Backbone hidden size d; filled from it."})
    encoder_hidden_size: int = field(
        default=100, metadata={"help": "Hidden size of the prefix projection d -> h -> num_layers * 2 * d."}
    )
    synthesizer_hidden_size: int = field(
        default=100, metadata={"help": "Hidden size of the synthesizer's per-token adapter d -> h -> d."}
    )
    temperature: float = field(default=3.0, metadata={"help": "Softmax temperature tau of the pool attention."})
    prompt_dropout: float = field(default=0.1, metadata={"help": "Dropout on the pool vectors while training."})
    init: str = field(
        default="uniform", metadata={"help": "Pool initialisation: 'uniform' in [0, 1) (the release) or 'normal'."}
    )
    init_std: float = field(default=0.02, metadata={"help": "Standard deviation for init='normal'."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The backbone the adapter was trained with (informational)."}
    )
    peft_type: str = field(default="HYPER_PROMPT", metadata={"help": "Adapter kind, for readers of the json."})
    task_type: str = field(default="FEATURE_EXTRACTION", metadata={"help": "PEFT task type."})

    def __post_init__(self) -> None:
        for name in ("num_virtual_tokens", "pool_size", "encoder_hidden_size", "synthesizer_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HyperPromptConfig.{name}={value!r}: expected an integer >= 1")
        if not self.temperature > 0:
            raise ValueError(f"HyperPromptConfig.temperature={self.temperature!r}: expected > 0")
        if not 0 <= self.prompt_dropout < 1:
            raise ValueError(f"HyperPromptConfig.prompt_dropout={self.prompt_dropout!r}: expected in [0, 1)")
        if self.init not in ("uniform", "normal"):
            raise ValueError(f"HyperPromptConfig.init={self.init!r}: expected 'uniform' or 'normal'")

    @classmethod
    def from_dict(cls, values: dict) -> HyperPromptConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"HyperPromptConfig: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def fill_from_backbone(self, backbone_config) -> HyperPromptConfig:
        """A copy with the backbone's shape (layers, heads, hidden size) filled in; a mismatch is an error."""
        shape = {
            "num_layers": backbone_config.num_hidden_layers,
            "num_attention_heads": backbone_config.num_attention_heads,
            "token_dim": backbone_config.hidden_size,
        }
        for name, value in shape.items():
            mine = getattr(self, name)
            if mine is not None and mine != value:
                raise ValueError(f"HyperPromptConfig.{name}={mine} does not match the backbone's {value}")
        return HyperPromptConfig.from_dict({**self.to_dict(), **shape})

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, ADAPTER_CONFIG_NAME), "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> HyperPromptConfig:
        path = os.path.join(directory, ADAPTER_CONFIG_NAME)
        try:
            with open(path) as f:
                values = json.load(f)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{path}: no hyper-prompt adapter config here") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(values)


class PrefixKV(NamedTuple):
    """Per-layer prefix keys and values, each (num_layers, B, H, L, d / H), and which prefix slots are open (B, L)."""

    keys: torch.Tensor
    values: torch.Tensor
    mask: torch.Tensor | None = None


class PromptSynthesizer(nn.Module):
    """ATTEMPT-style attention of a query over the pool.

    The query's token embeddings (B, T, d), detached, go through a per-token adapter Linear -> SiLU -> Linear and a
    LayerNorm; padding is masked only then (the release masked before the adapter, letting padding win the max-pool),
    and a max-pool over real tokens gives q (B, d). Prompt j's key is the max-pool of its L vectors (N, d).
    Attention a = softmax(q . k_j / tau), shape (B, N).
    """

    def __init__(self, token_dim: int, hidden_size: int, temperature: float):
        super().__init__()
        self.adapter = nn.Sequential(nn.Linear(token_dim, hidden_size), nn.SiLU(), nn.Linear(hidden_size, token_dim))
        self.norm = nn.LayerNorm(token_dim)
        self.temperature = temperature

    def forward(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
        hidden = self.norm(self.adapter(token_embeddings.detach()))
        hidden = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
        query = hidden.max(dim=1).values
        keys = pool.max(dim=1).values.to(query.dtype)
        return torch.softmax(query @ keys.T / self.temperature, dim=-1)


class HyperPrompt(nn.Module):
    """Prompt pool (N, L, d) + prefix projection + synthesizer; `forward` gives a `PrefixKV` and the attention."""

    def __init__(self, config: HyperPromptConfig):
        super().__init__()
        if None in (config.num_layers, config.num_attention_heads, config.token_dim):
            raise ValueError("HyperPromptConfig lacks the backbone shape: call fill_from_backbone")
        self.config = config
        d = config.token_dim
        self.pool = nn.Parameter(torch.empty(config.pool_size, config.num_virtual_tokens, d))
        self.dropout = nn.Dropout(config.prompt_dropout)
        self.projection = nn.Sequential(
            nn.Linear(d, config.encoder_hidden_size),
            nn.Tanh(),
            nn.Linear(config.encoder_hidden_size, config.num_layers * 2 * d),
        )
        self.synthesizer = (
            PromptSynthesizer(d, config.synthesizer_hidden_size, config.temperature) if config.pool_size > 1 else None
        )
        self.reset_pool()

    @torch.no_grad()
    def reset_pool(self) -> None:
        if self.config.init == "uniform":
            self.pool.uniform_(0.0, 1.0)
        else:
            self.pool.normal_(0.0, self.config.init_std)

    def attention(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d), (B, T) -> attention over the pool (B, N); all ones (B, 1) for the single prefix."""
        if self.synthesizer is None:
            return token_embeddings.new_ones(token_embeddings.shape[0], 1)
        return self.synthesizer(token_embeddings, attention_mask, self.pool)

    def forward(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> tuple[PrefixKV, torch.Tensor]:
        """(B, T, d) token embeddings, (B, T) mask -> (PrefixKV with (num_layers, B, H, L, d/H) keys/values, (B, N))."""
        cfg = self.config
        attention = self.attention(token_embeddings, attention_mask)
        projected = self.projection(self.dropout(self.pool))  # (N, L, num_layers * 2 * d)
        mixed = torch.einsum("bn,nlk->blk", attention.to(projected.dtype), projected)
        batch, length = mixed.shape[:2]
        head_dim = cfg.token_dim // cfg.num_attention_heads
        mixed = mixed.view(batch, length, cfg.num_layers, 2, cfg.num_attention_heads, head_dim)
        mixed = mixed.permute(3, 2, 0, 4, 1, 5)  # (2, num_layers, B, H, L, head_dim)
        return PrefixKV(mixed[0], mixed[1]), attention
