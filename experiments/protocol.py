"""The benchmark protocol file (configs/bbir-protocol.yaml): which systems are trained and evaluated, and how.

scripts/protocol.py runs it; protocol_report.py turns its saved results into docs/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from hyper_retrieval.core.types import WINDOW_MODES, WindowMode

KNOWN_RUN_KEYS = {"name", "config", "model", "from", "seeds", "overrides", "table", "pooled", "held_out",
                  "in_domain", "windows", "hybrid"}


@dataclass
class ProtocolRun:
    """One system to evaluate: trained (config, seed), a baseline (bm25, or a config's untrained model), or another
    run's trained model read differently (source: that run's name; e.g. with MaxP windows)."""

    name: str
    base: str  # the protocol entry's name: the run itself, or the run an extra seed copies
    table: str  # main, sensitivity, loo, sparse
    pooled: bool
    config: str | None = None
    model: str | None = None  # "bm25" for the lexical baseline
    seed: int | None = None  # None: not trained
    overrides: tuple[str, ...] = ()
    held_out: str | None = None
    in_domain: tuple[str, ...] = ()  # empty: the protocol's in-domain collections
    windows: WindowMode = "first"  # how long passages are read, in training and evaluation (core/types.py)
    hybrid: bool = False  # also evaluated fused with BM25 (eval.py --hybrid bm25), the primary seed only
    source: str | None = None  # the run whose dev-selected model this one evaluates (trains nothing)

    @property
    def primary(self) -> bool:
        """Not an extra-seed copy: the run that stands for its entry in single-seed tables."""
        return self.name == self.base


def load_protocol(path: Path) -> tuple[dict, list[ProtocolRun]]:
    """The protocol file and its runs (seeds expanded: the first seed keeps the name, others get -seed<S>).
    Raises ValueError naming the file and the entry for a missing key or an entry it cannot read."""
    protocol = yaml.safe_load(path.read_text())
    if not isinstance(protocol, dict):
        raise ValueError(f"{path}: expected a mapping of protocol keys, got {type(protocol).__name__}")
    for key in ("data_root", "in_domain", "zero_shot", "output_root", "profiles", "runs"):
        if key not in protocol:
            raise ValueError(f"{path}: missing key {key!r}")
    runs: list[ProtocolRun] = []
    for section in ("baselines", "runs"):
        for i, entry in enumerate(protocol.get(section) or []):
            unknown = set(entry) - KNOWN_RUN_KEYS
            if unknown or "name" not in entry or not {"config", "model", "from"} & set(entry):
                raise ValueError(f"{path}: {section}[{i}]: needs name and config (or model, or from), knows "
                                 f"{sorted(KNOWN_RUN_KEYS)}{f'; unknown {sorted(unknown)}' if unknown else ''}")
            if "from" in entry and {"config", "model", "seeds", "overrides", "held_out"} & set(entry):
                raise ValueError(f"{path}: {section}[{i}]: a run 'from' another evaluates that run's model: it takes "
                                 "no config, model, seeds, overrides or held_out of its own")
            table = entry.get("table", "main")
            seeds = entry.get("seeds", [42]) if section == "runs" and "from" not in entry else [None]
            for j, seed in enumerate(seeds):
                name = entry["name"] if j == 0 else f"{entry['name']}-seed{seed}"
                runs.append(ProtocolRun(name, entry["name"], table, entry.get("pooled", table == "main"),
                                        entry.get("config"), entry.get("model"), seed,
                                        tuple(entry.get("overrides", ())), entry.get("held_out"),
                                        tuple(entry.get("in_domain", ())), entry.get("windows", "first"),
                                        bool(entry.get("hybrid", False)), entry.get("from")))
                if runs[-1].windows not in WINDOW_MODES:
                    raise ValueError(f"{path}: {section}[{i}]: windows {runs[-1].windows!r}: expected first or max")
    check_sources(path, runs)
    return protocol, runs


def check_sources(path: Path, runs: list[ProtocolRun]) -> None:
    """Every 'from' names a trained run of the file."""
    trained = {r.name for r in runs if r.seed is not None}
    for run in runs:
        if run.source is not None and run.source not in trained:
            raise ValueError(f"{path}: run {run.name!r}: from {run.source!r}: no trained run of that name")


def model_folder(run: ProtocolRun, root: Path) -> str:
    """What eval.py loads: bm25, the untrained model saved for a baseline, or the dev-selected model (best/, else
    final/) of the run or of the run it comes from."""
    if run.model:
        return run.model
    if run.seed is None and run.source is None:
        return str(root / run.name / "model")
    folder = root / (run.source or run.name)
    return str(folder / "best" if (folder / "best").is_dir() else folder / "final")


def seeds_of(runs: list[ProtocolRun], name: str) -> list[ProtocolRun]:
    """A run and its other-seed copies (name-seed<S>)."""
    return [r for r in runs if r.base == name]


def at_seeds(runs: list[ProtocolRun], seeds: list[int]) -> list[ProtocolRun]:
    """The trained entries' runs at ``seeds`` instead of their own seed lists (scripts/protocol.py --seeds), named
    by the file's rule: the entry's first seed keeps the entry's name, any other seed S gives <name>-seed<S>. Runs
    that train nothing (baselines, runs 'from' another) are kept as they are; the file's order is kept."""
    expanded: list[ProtocolRun] = []
    for run in runs:
        if run.seed is None:
            expanded.append(run)
        elif run.primary:  # the entry's first seed: the template of every seed asked for
            expanded += [replace(run, seed=seed, name=run.base if seed == run.seed else f"{run.base}-seed{seed}")
                         for seed in dict.fromkeys(seeds)]
    return expanded
