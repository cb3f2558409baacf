"""Training configuration: typed dataclasses loaded from YAML, checked before any training starts.

`load_config(path, overrides)` reads a YAML file with up to five sections (model, data, optim, loss, train),
optionally on top of another file named by a top-level `base:` key (sections merged key by key),
applies `section.key=value` overrides (the value parsed as YAML), and checks every value against
the field's type. An unknown key, a wrong type, a value out of range or a missing data/backbone path raises
`ConfigError` naming the YAML file, the dotted key and what was expected; a YAML syntax error names the file
and line. Relative paths are resolved against the current working directory (train.py runs from the repo root).

Defaults follow the paper and its release (../shared/docs/METHOD.md) where they give a value; the others are
marked "our choice".
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from hyper_retrieval.core.locations import looks_local
from hyper_retrieval.core.strict_yaml import StrictYamlError, load_yaml, short_repr
from hyper_retrieval.core.types import WindowMode
from modeling_hyper import HyperPromptConfig, PromptSettingError

BEIR_FILES = ("corpus.jsonl", "queries.jsonl")
# Keys that got one name from the YAML to modeling_hyper/ (old name -> new name), named in the error for an old config.
RENAMED_KEYS = {
    "model.prompt_length": "model.num_virtual_tokens",
    "model.attention_temperature": "model.synthesizer_temperature",
    "model.prefix_hidden_size": "model.encoder_hidden_size",
    "model.adapter_hidden_size": "model.synthesizer_hidden_size",
    "loss.temperature": "loss.contrastive_temperature",
    "data.task_temperature": "data.task_sampling_temperature",
}


class ConfigError(ValueError):
    """A configuration problem found before training: names the file, the dotted key and what was expected."""


def _at_least(minimum: float, *, strict: bool = False) -> dict[str, Any]:
    """Field metadata: the value must be >= minimum (> minimum when strict)."""
    return {"min": minimum, "strict": strict}


def _within(minimum: float, maximum: float) -> dict[str, Any]:
    """Field metadata: the value must be in [minimum, maximum]."""
    return {"min": minimum, "strict": False, "max": maximum}


# The prompt settings are declared once, in modeling_hyper's HyperPromptConfig (type, default and help); the YAML's
# model section takes them under the same names. What the backbone fills in and what is informational stays there.
NOT_SETTINGS = ("num_layers", "num_attention_heads", "token_dim", "base_model_name_or_path", "backbone_frozen",
                "task_names", "peft_type", "task_type")
_PROMPT_FIELDS = [f for f in dataclasses.fields(HyperPromptConfig) if f.name not in NOT_SETTINGS]
PROMPT_SETTINGS = tuple(f.name for f in _PROMPT_FIELDS)
_PROMPT_HINTS = typing.get_type_hints(HyperPromptConfig)
PromptSettings = dataclasses.make_dataclass(
    "PromptSettings",
    [(f.name, _PROMPT_HINTS[f.name], field(default=f.default, metadata=f.metadata)) for f in _PROMPT_FIELDS],
)


@dataclass
class ModelSettings(PromptSettings):
    """The retriever: backbone, representation, encoders and passage windows, and (inherited) every setting of
    HyperPromptConfig under its own name (pool_size, num_virtual_tokens, synthesizer, ...: see its field help)."""

    backbone: str = "naver/splade-cocondenser-ensembledistil"  # SPLADE++ (the paper's main backbone); hub id or dir
    representation: Literal["dense", "sparse"] = "sparse"
    pooling: Literal["mean", "cls"] = "cls"  # dense only; sparse uses SPLADE's max over tokens of log(1 + relu)
    normalize: bool = False  # L2-normalise dense vectors (the paper scores with a plain dot product)
    # no prompt, one shared prefix, HypeR's pool, or the oracle: a prompt per training task chosen by the task id
    # (no router; a query of any other task takes the pool's mean)
    prompt: Literal["none", "prefix", "hyper", "task"] = "hyper"
    freeze_query_backbone: bool = False  # the paper trains it jointly (the release froze it by accident)
    share_encoders: bool = False  # the release keeps separate query and passage copies
    freeze_passage_encoder: bool = True  # frozen in the release: the passage index is built once
    max_query_length: int = field(default=64, metadata=_at_least(2))  # our choice; saved in the model config
    max_passage_length: int = field(default=256, metadata=_at_least(1))  # our choice; the window length
    # Long passages: first = FirstP (first window only, truncated); max = MaxP, a passage scored by its best window
    # (training too, through the frozen passage table: needs freeze_passage_encoder and share_encoders false)
    passage_windows: WindowMode = "first"
    passage_window_stride: int | None = field(default=None, metadata=_at_least(1))  # None: half a window


@dataclass
class CollectionSettings:
    """One BEIR-format training collection and the task it belongs to (task names label CPR's pairs)."""

    path: str
    task: str = ""  # empty: the collection folder's name
    max_queries: int | None = field(default=None, metadata=_at_least(1))  # first n training queries (quick runs)

    @property
    def task_name(self) -> str:
        """The task label: `task`, or the collection folder's name when unset."""
        return self.task or Path(self.path).name


@dataclass
class DataSettings:
    """Training data: collections, splits, hard negatives and multi-task sampling."""

    collections: list[CollectionSettings] = field(default_factory=list)
    train_split: str = "train"
    dev_split: str | None = "dev"  # None: no periodic dev evaluation
    negatives: Literal["bm25", "none", "dense"] = "bm25"
    num_negatives: int = field(default=19, metadata=_at_least(0))  # hard negatives per query (paper: 19)
    negatives_depth: int = field(default=100, metadata=_at_least(1))  # mined per query, gold removed (our choice)
    negatives_cache_dir: str = ".cache/negatives"
    bm25_k1: float = field(default=1.5, metadata=_within(0, 100))  # past a few, tf saturation no longer changes
    bm25_b: float = field(default=0.75, metadata=_within(0, 1))  # 0: no length normalisation, 1: full
    sampling: Literal["mixed", "homogeneous"] = "mixed"  # mixed = tasks concatenated and shuffled (the paper)
    task_sampling_temperature: float = field(default=1.0, metadata=_at_least(0, strict=True))  # p_t ~ n_t^(1/T)

    @property
    def task_names(self) -> list[str]:
        """Distinct task names in collection order; a task's position is its id for CPR and the memory bank."""
        return list(dict.fromkeys(c.task_name for c in self.collections))


@dataclass
class OptimSettings:
    """AdamW with separate learning rates, linear warm-up and decay, clipping, accumulation, precision."""

    backbone_lr: float = field(default=2e-5, metadata=_at_least(0, strict=True))
    prompt_lr: float = field(default=1e-3, metadata=_at_least(0, strict=True))
    weight_decay: float = field(default=0.01, metadata=_at_least(0))
    warmup_ratio: float = field(default=0.1, metadata=_within(0, 1))  # our choice; ignored when warmup_steps is set
    warmup_steps: int | None = field(default=None, metadata=_at_least(0))
    epochs: int = field(default=5, metadata=_at_least(1))  # paper: 5-10; ignored when max_steps is set
    max_steps: int | None = field(default=None, metadata=_at_least(1))
    grad_clip: float = field(default=1.0, metadata=_at_least(0))  # 0 disables clipping
    grad_accum: int = field(default=1, metadata=_at_least(1))
    # None: the launcher's (`accelerate launch --mixed_precision`, `accelerate config`), else no; set, it wins.
    # auto: bf16 where the device computes it faster than float32 (a bf16 GPU, a CPU with AMX, an AMD CPU with
    # AVX512-BF16), else no (precision.py)
    mixed_precision: Literal["no", "bf16", "fp16", "auto"] | None = None
    gradient_checkpointing: bool = False
    # CUDA only: float32 matmuls in TF32 (10-bit mantissa, ~8x the float32 rate on tensor cores); the CPU ignores it
    tf32: bool = True
    # None: fused on CUDA, and on the CPU under bf16/fp16 autocast (1.2x a bf16 step there); a float32 CPU run keeps
    # torch's per-parameter AdamW, whose rounding earlier float32 CPU runs reproduce bit for bit. Set, it wins.
    fused_adamw: bool | None = None

    def warmup_for(self, total_steps: int) -> int:
        """Learning-rate warm-up steps: warmup_steps when set, else warmup_ratio of the run's total steps."""
        return self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * total_steps)


@dataclass
class LossSettings:
    """Contrastive loss, CPR and the FLOPS regularizer."""

    contrastive_temperature: float = field(default=1.0, metadata=_at_least(0, strict=True))  # scores / temperature
    cpr_weight: float = field(default=0.1, metadata=_at_least(0))  # lambda_c (best in the paper's sweep)
    cpr_pull: bool = True
    cpr_push: bool = True
    cpr_pull_weight: float = field(default=1.0, metadata=_at_least(0))
    cpr_push_weight: float = field(default=0.5, metadata=_at_least(0))
    memory_bank_size: int = field(default=32, metadata=_at_least(0))  # attention vectors kept per task; 0 = off
    flops_weight: float = field(default=2e-4, metadata=_at_least(0))  # sparse only
    flops_warmup_steps: int = field(default=1000, metadata=_at_least(0))  # our choice (the paper gives none)
    # Auxiliary router terms on the synthesizer (0 = off; losses.py): ST-MoE's z-loss, Switch's load balance, and
    # minus the mutual information between task and prompt (Mod-Squad).
    router_z_weight: float = field(default=0.0, metadata=_at_least(0))
    router_balance_weight: float = field(default=0.0, metadata=_at_least(0))
    router_mi_weight: float = field(default=0.0, metadata=_at_least(0))


@dataclass
class TrainSettings:
    """Run control: seed, batch, output, checkpoint/eval/log cadence."""

    seed: int = field(default=42, metadata=_at_least(0))
    batch_size: int = field(default=24, metadata=_at_least(1))  # queries per process (paper: 8 GPUs x 24)
    output_dir: str = "outputs/run"
    save_every: int = field(default=1000, metadata=_at_least(1))
    eval_every: int = field(default=1000, metadata=_at_least(1))
    log_every: int = field(default=50, metadata=_at_least(1))
    # dev metric that selects the best checkpoint (the metrics every dev evaluation computes)
    keep_best_metric: Literal["ndcg@10", "r_precision", "recall@20", "recall@100", "mrr@10"] = "ndcg@10"
    # A frozen separate passage encoder's corpus vectors are computed once and cached here (shared with eval.py's
    # --cache-dir); training then looks passages up. The training queries' token ids are kept here too.
    # None: no disk cache (both still computed once per run).
    embedding_cache_dir: str | None = "outputs/embedding_cache"


@dataclass
class TrainConfig:
    """The whole training configuration (one attribute per YAML section)."""

    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    optim: OptimSettings = field(default_factory=OptimSettings)
    loss: LossSettings = field(default_factory=LossSettings)
    train: TrainSettings = field(default_factory=TrainSettings)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-serialisable), e.g. to save the resolved config next to a checkpoint."""
        return dataclasses.asdict(self)


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read `path`, apply `section.key=value` overrides, type-check, and check that data/backbone paths exist.

    Raises ConfigError (a ValueError) naming the file and the dotted key, or the file and line for YAML syntax.
    """
    path = Path(path)
    raw = _read_yaml(path, seen=())
    for override in overrides or []:
        _apply_override(raw, override, path)
    config = _build(TrainConfig, raw, "", path)
    _check_prompt(config, path)
    _check_paths(config, path)
    _check_windows(config, path)
    return config


def _check_prompt(config: TrainConfig, source: Path) -> None:
    """The prompt settings pass HyperPromptConfig's own checks (ranges, choices), reported with the file and key."""
    try:
        HyperPromptConfig(**{name: getattr(config.model, name) for name in PROMPT_SETTINGS})
    except PromptSettingError as e:
        raise ConfigError(f"{source}: model.{e.field}: {e}") from None


def _read_yaml(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """The file's sections, on top of those of the file its optional `base:` key names (relative to it)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in seen:
        raise ConfigError(f"{path}: base: configs include each other ({' -> '.join(map(str, seen))})")
    try:
        raw = load_yaml(path.read_bytes(), str(path))
    except StrictYamlError as err:
        raise ConfigError(str(err)) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror or err})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base: expected the path of another config file, got {base!r}")
    if not (path.parent / base).is_file():
        raise ConfigError(f"{path}: base: {base!r} not found (looked for {(path.parent / base).resolve()})")
    merged = _read_yaml(path.parent / base, (*seen, path.resolve()))
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return merged


def _apply_override(raw: dict[str, Any], override: str, source: Path) -> None:
    """Set raw[section][key] from 'section.key=value' (value parsed as YAML); list items are not addressable."""
    key, sep, text = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise ConfigError(f"{source}: override {override!r}: expected section.key=value")
    try:
        value = load_yaml(text, f"{source}: override {override!r}")
    except StrictYamlError as err:
        raise ConfigError(str(err)) from None
    if isinstance(value, bool) and text.strip().lower() not in ("true", "false"):
        value = text.strip()  # on the command line only true/false are booleans: mixed_precision=no means "no"
    node = raw
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: override {override!r}: {part} is not a section")
        node = child
    node[parts[-1]] = value


_FLOAT_TEXT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def _build(cls: type, raw: Any, prefix: str, source: Path) -> Any:
    """Instantiate dataclass `cls` from a raw mapping, rejecting unknown keys and checking every field."""
    where = prefix.rstrip(".") or "top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {where}: expected a mapping, got {short_repr(raw)} ({type(raw).__name__})")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            if f"{prefix}{key}" in RENAMED_KEYS:
                raise ConfigError(f"{source}: {prefix}{key} was renamed {RENAMED_KEYS[f'{prefix}{key}']}")
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f" (did you mean {prefix}{close[0]}?)" if close else ""
            raise ConfigError(
                f"{source}: unknown key {prefix}{key}{hint}; {where} accepts: {', '.join(sorted(fields))}"
            )
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        dotted = f"{prefix}{name}"
        if name not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{source}: missing required key {dotted}")
            continue
        value = _coerce(raw[name], hints[name], dotted, source)
        _check_range(value, f.metadata, dotted, source)
        values[name] = value
    return cls(**values)


def _coerce(value: Any, hint: Any, dotted: str, source: Path) -> Any:
    """Check `value` against type `hint` (bool, int, float, str, Literal, X | None, list[...], dataclass)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, dotted, source)
    if origin is Literal:
        if value in args and type(value) is type(args[0]):
            return value
        hint_text = " (quote it: YAML reads no/off/yes/on as booleans)" if isinstance(value, bool) else ""
        return _wrong(value, "one of " + ", ".join(repr(a) for a in args) + hint_text, dotted, source)
    if origin is list:
        if not isinstance(value, list):
            return _wrong(value, "a list", dotted, source)
        return [_coerce(item, args[0], f"{dotted}[{i}]", source) for i, item in enumerate(value)]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, f"{dotted}.", source)
    if hint is bool:
        return value if isinstance(value, bool) else _wrong(value, "true or false", dotted, source)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        return value if ok else _wrong(value, "an integer", dotted, source)
    if hint is float:
        # YAML 1.1 reads 1e-3 (no dot) as a string: accept numeric text for floats.
        if isinstance(value, str) and _FLOAT_TEXT.match(value.strip()):
            value = float(value)
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        return float(value) if ok else _wrong(value, "a finite number", dotted, source)
    if hint is str:
        return value if isinstance(value, str) else _wrong(value, "a string", dotted, source)
    raise TypeError(f"config field {dotted} has an unsupported type {hint!r}")


def _wrong(value: Any, expected: str, dotted: str, source: Path) -> typing.NoReturn:
    raise ConfigError(f"{source}: {dotted}: expected {expected}, got {short_repr(value)} ({type(value).__name__})")


def _check_range(value: Any, metadata: typing.Mapping[str, Any], dotted: str, source: Path) -> None:
    """Enforce a field's `min` / `strict` / `max` metadata on a number (None passes)."""
    if value is None or "min" not in metadata:
        return
    minimum, strict, maximum = metadata["min"], metadata["strict"], metadata.get("max")
    if maximum is not None and not minimum <= value <= maximum:
        raise ConfigError(f"{source}: {dotted}: expected a value in [{minimum}, {maximum}], got {short_repr(value)}")
    if value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ConfigError(f"{source}: {dotted}: expected a value {relation} {minimum}, got {short_repr(value)}")


def _check_windows(config: TrainConfig, source: Path) -> None:
    """MaxP training scores passages through the frozen passage table, which only a frozen separate encoder has."""
    model = config.model
    if model.passage_windows == "max" and (model.share_encoders or not model.freeze_passage_encoder):
        raise ConfigError(f"{source}: model.passage_windows: 'max' needs model.freeze_passage_encoder: true and "
                          "model.share_encoders: false (training reads a passage's windows from the frozen passage "
                          "table); with a trained passage encoder use 'first'")
    if model.passage_window_stride is not None and model.passage_windows != "max":
        raise ConfigError(f"{source}: model.passage_window_stride: applies to model.passage_windows: max only")


def _check_paths(config: TrainConfig, source: Path) -> None:
    """Fail early on a missing local collection folder/file or a missing local backbone folder.

    A path that does not look local (`looks_local`: 'org/name' or 'name') is taken for a Hub id and not checked.
    """
    if not config.data.collections:
        raise ConfigError(f"{source}: data.collections: expected at least one collection")
    backbone = config.model.backbone
    if looks_local(backbone) and not Path(backbone).expanduser().is_dir():
        raise ConfigError(
            f"{source}: model.backbone: expected a Hub id (org/name) or an existing folder, "
            f"but folder {Path(backbone).expanduser().resolve()} does not exist"
        )
    names: dict[str, int] = {}
    for i, coll in enumerate(config.data.collections):
        name = Path(coll.path).name
        if name in names:
            raise ConfigError(f"{source}: data.collections[{i}].path: {coll.path} has the folder name {name!r} of "
                              f"data.collections[{names[name]}] ({config.data.collections[names[name]].path}); "
                              "collections are told apart by that name")
        names[name] = i
    splits = [s for s in (config.data.train_split, config.data.dev_split) if s is not None]
    for i, coll in enumerate(config.data.collections):
        if not looks_local(coll.path):
            continue
        folder = Path(coll.path).expanduser()
        needed = [folder / name for name in BEIR_FILES] + [folder / "qrels" / f"{s}.tsv" for s in splits]
        missing = [p for p in needed if not p.is_file()]
        if missing:
            raise ConfigError(
                f"{source}: data.collections[{i}].path: expected a BEIR-format folder with "
                f"{', '.join(BEIR_FILES)} and qrels/<split>.tsv, but {missing[0].resolve()} does not exist"
            )
