"""The hyper-prompt adapter: prompt pool, prefix projection (P-tuning v2) and prompt synthesizer (ATTEMPT-style).

Shapes: B queries of T tokens, hidden size d, N prompts of L virtual tokens, `num_layers` layers with H heads of
size d / H. For every query the synthesizer gives an attention a (B, N) over the pool; the projected prompts are
mixed with it into one prefix: keys and values of shape (num_layers, B, H, L, d / H), prepended at every layer.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from typing import NamedTuple

import torch
from torch import nn

ADAPTER_CONFIG_NAME = "hyper_prompt_config.json"
ADAPTER_WEIGHTS_NAME = "hyper_prompt.safetensors"


SYNTHESIZERS = ("release", "standardized", "cosine", "task")
# The synthesizer's initial temperature when `synthesizer_temperature` is None: the release's constant tau = 3; for
# the standardized forms, logits of about unit spread at initialisation (see PromptSynthesizer).
DEFAULT_SYNTHESIZER_TEMPERATURE = {"release": 3.0, "standardized": 1.0, "cosine": 0.5, "task": 1.0}
# The lower bound of a learnable temperature when `synthesizer_min_temperature` is None: the cosine form's logits are
# then at most 4 in size, so a query mixes its prompts instead of taking one (docs/RESULTS.md, the routing sweep).
DEFAULT_MIN_TEMPERATURE = {"standardized": 0.01, "cosine": 0.25}
# Upper bound of a learnable temperature (the lower one is `synthesizer_min_temperature`): the cosine form's scale
# 1 / tau is at least 1, as X-MoE's.
MAX_TEMPERATURE = {"standardized": 1e2, "cosine": 1.0}
# Keys of configs saved before a setting got its one name (hyper_prompt_config.json, config.json of older models).
RENAMED_KEYS = {"temperature": "synthesizer_temperature", "init": "prompt_init", "init_std": "prompt_init_std"}



class PromptSettingError(ValueError):
    """A HyperPromptConfig field given a value it cannot take; ``field`` names it."""

    def __init__(self, name: str, value: object, expected: str):
        super().__init__(f"HyperPromptConfig.{name}={value!r}: expected {expected}")
        self.field = name


@dataclass
class HyperPromptConfig:
    """PEFT-style settings of the prompt pool; field names follow peft's PromptLearningConfig where they apply.

    PEFT-style in layout only: the hyper-prompt is not one of PEFT's adapter types, so PEFT's loaders
    (`PeftConfig.from_pretrained`, `PeftModel.from_pretrained`) do not read it, and it is saved as
    hyper_prompt_config.json (not adapter_config.json, which would send AutoModel looking for a PEFT adapter).
    `HyperRetrieverModel.save_adapter` saves it; `load_adapter` / `set_adapter` put several on one frozen backbone,
    `attach_adapter` puts one back on the model it was trained with.

    Each setting has one name from train.py's YAML (`model.<name>`) to here.
    """

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
    synthesizer: str = field(
        default="cosine",
        metadata={"help": "How a query scores the prompts: 'release' (q . k / tau, tau fixed: the authors' form), "
                          "'standardized' (q centred and scaled by running statistics, keys centred over the pool, "
                          "learnable tau), 'cosine' (cosine of the standardized q and keys, learnable bounded tau) "
                          "or 'task' (an oracle, no router: a query takes its task's prompt, see task_names)."},
    )
    task_names: list[str] | None = field(
        default=None,
        metadata={"help": "synthesizer='task': the task of each prompt, in pool order (pool_size of them). A query "
                          "given one of these tasks takes that prompt alone; a query of another task, or of none, "
                          "the pool's mean."},
    )
    synthesizer_temperature: float | None = field(
        default=None,
        metadata={"help": "Softmax temperature tau of the pool attention (the initial value where it is learnable); "
                          "None: the synthesizer's default (release 3.0, standardized 1.0, cosine 0.5)."},
    )
    synthesizer_min_temperature: float | None = field(
        default=None,
        metadata={"help": "Lower bound of the learnable temperature (standardized and cosine): bounds how sharp the "
                          "routing can get (cosine: logits at most 1 / this in size). None: the synthesizer's default "
                          "(standardized 0.01, cosine 0.25)."},
    )
    synthesizer_momentum: float = field(
        default=0.1, metadata={"help": "Momentum of the running statistics of q (standardized and cosine)."}
    )
    balance_bias_rate: float = field(
        default=0.0,
        metadata={"help": "Per-prompt balancing bias on the logits, moved by this much per training step towards "
                          "equal top-prompt load, without gradient (DeepSeek's loss-free balancing); 0 = off."},
    )
    prompt_dropout: float = field(default=0.1, metadata={"help": "Dropout on the pool vectors while training."})
    prompt_init: str = field(
        default="uniform", metadata={"help": "Pool initialisation: 'uniform' in [0, 1) (the release) or 'normal'."}
    )
    prompt_init_std: float = field(default=0.02, metadata={"help": "Standard deviation for prompt_init='normal'."})
    base_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The backbone the adapter was trained with (`load_adapter` refuses another)."}
    )
    backbone_frozen: bool | None = field(
        default=None,
        metadata={"help": "Whether the query backbone stayed frozen while the adapter trained (save_adapter records "
                          "it): only then does the adapter work on the plain backbone, so only then may "
                          "`load_adapter` put it on one. None: not recorded (adapters saved before this field)."},
    )
    peft_type: str = field(default="HYPER_PROMPT", metadata={"help": "Adapter kind, for readers of the json."})
    task_type: str = field(default="FEATURE_EXTRACTION", metadata={"help": "PEFT task type."})

    def __post_init__(self) -> None:
        for name in ("num_virtual_tokens", "pool_size", "encoder_hidden_size", "synthesizer_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise PromptSettingError(name, value, "an integer >= 1")
        if self.synthesizer not in SYNTHESIZERS:
            raise PromptSettingError("synthesizer", self.synthesizer, f"one of {SYNTHESIZERS}")
        if self.synthesizer == "task" and not (
                isinstance(self.task_names, list) and len(set(self.task_names)) == len(self.task_names) ==
                self.pool_size and all(isinstance(n, str) for n in self.task_names)):
            raise PromptSettingError("task_names", self.task_names, f"{self.pool_size} distinct task names "
                                     "(one per prompt) for synthesizer='task'")
        if self.synthesizer_temperature is None:
            self.synthesizer_temperature = DEFAULT_SYNTHESIZER_TEMPERATURE[self.synthesizer]
        if self.synthesizer_min_temperature is None:
            self.synthesizer_min_temperature = DEFAULT_MIN_TEMPERATURE.get(self.synthesizer, 0.01)
        if not self.synthesizer_min_temperature > 0:
            raise PromptSettingError("synthesizer_min_temperature", self.synthesizer_min_temperature, "> 0")
        low, high = self.temperature_bounds()
        if not (self.synthesizer_temperature > 0 and low <= self.synthesizer_temperature <= high):
            bounds = f" and in [{low}, {high}] for synthesizer={self.synthesizer!r}" if low else ""
            raise PromptSettingError("synthesizer_temperature", self.synthesizer_temperature, f"> 0{bounds}")
        if not 0 < self.synthesizer_momentum <= 1:
            raise PromptSettingError("synthesizer_momentum", self.synthesizer_momentum, "in (0, 1]")
        if not (math.isfinite(self.balance_bias_rate) and self.balance_bias_rate >= 0):
            raise PromptSettingError("balance_bias_rate", self.balance_bias_rate, ">= 0")
        if not 0 <= self.prompt_dropout < 1:
            raise PromptSettingError("prompt_dropout", self.prompt_dropout, "in [0, 1)")
        if self.prompt_init not in ("uniform", "normal"):
            raise PromptSettingError("prompt_init", self.prompt_init, "'uniform' or 'normal'")
        if not (math.isfinite(self.prompt_init_std) and self.prompt_init_std > 0):
            raise PromptSettingError("prompt_init_std", self.prompt_init_std, "> 0")

    def temperature_bounds(self) -> tuple[float, float]:
        """Where the synthesizer's temperature may be: fixed (any > 0) for release, bounded where it is learnable."""
        if self.synthesizer in ("release", "task"):
            return 0.0, math.inf
        return self.synthesizer_min_temperature, MAX_TEMPERATURE[self.synthesizer]

    @classmethod
    def from_dict(cls, values: dict) -> HyperPromptConfig:
        if "temperature" in values and "synthesizer" not in values:
            values = {**values, "synthesizer": "release"}  # saved before the synthesizer had variants
        values = {RENAMED_KEYS.get(k, k): v for k, v in values.items()}
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


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum over processes (statistics that must agree across DDP ranks); x itself with one process."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(x)
    return x


class PromptSynthesizer(nn.Module):
    """ATTEMPT-style attention of a query over the pool: logits (B, N) and attention softmax(logits) (B, N).

    The query's token embeddings (B, T, d), detached, go through a per-token adapter Linear -> SiLU -> Linear and a
    LayerNorm; padding is masked only then (the release masked before the adapter, letting padding win the max-pool),
    and a max-pool over real tokens gives q (B, d). Prompt j's key k_j is the max-pool of its L vectors (N, d).

    - release: logits = q . k_j / tau with a constant tau (the authors' form). On a dense backbone the part of q
      shared by all queries outweighs the per-query part, so every query prefers the same prompt.
    - standardized: q^ = (q - mu) / sigma per coordinate, as BatchNorm does: in training mu and sigma are the batch's
      (with gradient, so a shift of q common to all queries is invisible and cannot be learned) and update running
      statistics (averaged across processes); in eval the running statistics are used, so a query's attention never
      depends on its batch. Keys are centred over the pool and scaled to unit RMS; logits = q^ . k^_j / (sqrt(d) tau)
      with a learnable tau. The mean logit of every prompt over a batch is then zero: no prompt is preferred by all.
    - cosine: logits = cos(q^, k^_j) / tau, tau learnable in [synthesizer_min_temperature, 1] (X-MoE's bounded
      scale): every logit is at most 1 / synthesizer_min_temperature in size.

    A balancing bias (N,) (`balance_bias_rate` > 0) is added to the logits of any form; each training forward moves
    it by the rate towards equal top-prompt load, without gradient.
    """

    def __init__(self, config: HyperPromptConfig):
        super().__init__()
        d = config.token_dim
        self.kind = config.synthesizer
        self.adapter = nn.Sequential(
            nn.Linear(d, config.synthesizer_hidden_size), nn.SiLU(), nn.Linear(config.synthesizer_hidden_size, d)
        )
        self.norm = nn.LayerNorm(d)
        self.temperature = config.synthesizer_temperature  # the constant of 'release'; the initial value otherwise
        self.temperature_bounds = config.temperature_bounds()
        self.momentum = config.synthesizer_momentum
        self.balance_rate = config.balance_bias_rate
        if self.kind != "release":
            self.log_temperature = nn.Parameter(torch.tensor(math.log(config.synthesizer_temperature)))
            self.register_buffer("running_mean", torch.zeros(d))
            self.register_buffer("running_var", torch.ones(d))
            self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))
            self.statistics_checked = False  # whether eval has looked at num_updates yet (for the warning)
        if self.balance_rate > 0:
            self.register_buffer("balance_bias", torch.zeros(config.pool_size))

    def pooled_query(self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, d), (B, T) -> q (B, d): adapter, LayerNorm, then a max-pool over the real tokens."""
        hidden = self.norm(self.adapter(token_embeddings.detach()))
        hidden = hidden.masked_fill(~attention_mask.bool().unsqueeze(-1), torch.finfo(hidden.dtype).min)
        return hidden.max(dim=1).values

    def current_temperature(self) -> torch.Tensor | float:
        """tau: the constant of the release form, else the learnable one clamped to its bounds."""
        if self.kind == "release":
            return self.temperature
        return self.log_temperature.exp().clamp(*self.temperature_bounds)

    @torch.no_grad()
    def _update_statistics(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Running mean and variance of q from a training batch's (averaged over processes): a cumulative average for
        the first 1 / momentum batches, an exponential one after."""
        sums = torch.cat([mean.new_tensor([count]), count * mean, count * (var + mean.pow(2))]).float()
        stats = _all_reduce_sum(sums)
        d = len(self.running_mean)
        total, mean = stats[0], stats[1 : 1 + d] / stats[0]
        var = (stats[1 + d :] / total - mean.pow(2)).clamp_min(0.0)
        rate = (1.0 / (self.num_updates + 1)).clamp(min=self.momentum).to(self.running_mean.dtype)  # no device wait
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), rate)
        self.running_var.lerp_(var.to(self.running_var.dtype), rate)
        self.num_updates += 1

    @torch.no_grad()
    def calibrate(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> int:
        """Sets the running statistics to the exact mean and variance of q over (token embeddings (B, T, d), mask
        (B, T)) batches, as "precise BN" does: the running average lags while the adapter trains. Returns the
        number of queries seen (0 leaves the statistics as they were)."""
        if self.kind == "release":
            return 0
        count, total, squares = 0, 0.0, 0.0
        for token_embeddings, attention_mask in batches:
            query = self.pooled_query(token_embeddings, attention_mask).double()
            count, total, squares = count + len(query), total + query.sum(0), squares + query.pow(2).sum(0)
        if count:
            mean = total / count
            self.running_mean.copy_(mean)
            self.running_var.copy_((squares / count - mean.pow(2)).clamp_min(0.0))
            self.num_updates.clamp_(min=1)
        return count

    @torch.no_grad()
    def _update_balance(self, logits: torch.Tensor) -> None:
        """Moves the bias of an over-chosen prompt down and of an under-chosen one up, by the rate."""
        load = _all_reduce_sum(nn.functional.one_hot(logits.argmax(-1), len(self.balance_bias)).sum(0).float())
        self.balance_bias += self.balance_rate * torch.sign(load.mean() - load).to(self.balance_bias.dtype)

    def forward(
        self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor, pool: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, d) token embeddings, (B, T) mask, (N, L, d) pool -> (attention (B, N), logits (B, N))."""
        query = self.pooled_query(token_embeddings, attention_mask)
        keys = pool.max(dim=1).values.to(query.dtype)  # (N, d)
        if self.kind == "release":
            logits = query @ keys.T / self.temperature
        else:
            if self.training:  # batch statistics, with gradient: a shift common to the batch is invisible
                mean, var = query.mean(dim=0), query.var(dim=0, unbiased=False)
                self._update_statistics(mean.detach(), var.detach(), len(query))
            else:
                if not self.statistics_checked:  # once: reading the buffer syncs with the device
                    self.statistics_checked = True
                    if not self.num_updates:
                        warnings.warn(
                            "the prompt synthesizer's running statistics were never set (train the model, or call "
                            "HyperRetrieverModel.calibrate_synthesizer(queries)): it routes on unstandardized queries",
                            stacklevel=2,
                        )
                mean, var = self.running_mean, self.running_var
            query = (query - mean) * torch.rsqrt(var + 1e-5)
            keys = keys - keys.mean(dim=0, keepdim=True)
            keys = keys * torch.rsqrt(keys.pow(2).mean() + 1e-12)
            if self.kind == "cosine":
                query, keys = nn.functional.normalize(query, dim=-1), nn.functional.normalize(keys, dim=-1)
            else:
                query = query / math.sqrt(query.shape[-1])
            logits = query @ keys.T / self.current_temperature()
        if self.balance_rate > 0:
            logits = logits + self.balance_bias.to(logits.dtype)
            if self.training:
                self._update_balance(logits.detach())
        return torch.softmax(logits, dim=-1), logits


class HyperPrompt(nn.Module):
    """Prompt pool (N, L, d) + prefix projection + synthesizer; `forward` gives a `PrefixKV`, the attention over the
    pool and its logits."""

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
        self.synthesizer = PromptSynthesizer(config) if config.pool_size > 1 and config.synthesizer != "task" else None
        self.reset_pool()

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """The adapter's two files: hyper_prompt_config.json and hyper_prompt.safetensors."""
        from safetensors.torch import save_file

        self.config.save_pretrained(directory)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, os.path.join(directory, ADAPTER_WEIGHTS_NAME), metadata={"format": "pt"})

    @torch.no_grad()
    def reset_pool(self) -> None:
        if self.config.prompt_init == "uniform":
            self.pool.uniform_(0.0, 1.0)
        else:
            self.pool.normal_(0.0, self.config.prompt_init_std)

    def attention(
        self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, d), (B, T) -> (attention over the pool (B, N), its logits (B, N)); all ones (B, 1) and no logits
        for the single prefix. The 'task' form reads `task_ids` (B,) instead: prompt j for id j, the pool's mean for
        -1 (or for every query when None), no logits."""
        if self.config.synthesizer == "task":
            count = self.config.pool_size
            mean = token_embeddings.new_full((token_embeddings.shape[0], count), 1.0 / count)
            if task_ids is None:
                return mean, None
            chosen = nn.functional.one_hot(task_ids.clamp(min=0), count).to(mean.dtype)
            return torch.where((task_ids >= 0)[:, None], chosen, mean), None
        if self.synthesizer is None:
            return token_embeddings.new_ones(token_embeddings.shape[0], 1), None
        return self.synthesizer(token_embeddings, attention_mask, self.pool)

    def forward(
        self, token_embeddings: torch.Tensor, attention_mask: torch.Tensor, task_ids: torch.Tensor | None = None
    ) -> tuple[PrefixKV, torch.Tensor, torch.Tensor | None]:
        """(B, T, d) token embeddings, (B, T) mask, (B,) task ids (the 'task' form only) -> (PrefixKV with
        (num_layers, B, H, L, d/H) keys/values, attention (B, N), logits (B, N) or None)."""
        cfg = self.config
        attention, logits = self.attention(token_embeddings, attention_mask, task_ids)
        projected = self.projection(self.dropout(self.pool))  # (N, L, num_layers * 2 * d)
        mixed = torch.einsum("bn,nlk->blk", attention.to(projected.dtype), projected)
        batch, length = mixed.shape[:2]
        head_dim = cfg.token_dim // cfg.num_attention_heads
        mixed = mixed.view(batch, length, cfg.num_layers, 2, cfg.num_attention_heads, head_dim)
        mixed = mixed.permute(3, 2, 0, 4, 1, 5)  # (2, num_layers, B, H, L, head_dim)
        return PrefixKV(mixed[0], mixed[1]), attention, logits
