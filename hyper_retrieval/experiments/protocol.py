"""The benchmark protocol file (configs/bbir-protocol.yaml): which systems are trained and evaluated, and how.

scripts/protocol.py runs it; protocol_report.py turns its saved results into docs/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

KNOWN_RUN_KEYS = {"name", "config", "model", "seeds", "overrides", "table", "pooled", "held_out", "in_domain",
                  "windows", "hybrid"}


@dataclass
class ProtocolRun:
    """One system to evaluate: trained (config, seed) or a baseline (bm25, or a config's untrained model)."""

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
    windows: str = "first"  # how long passages are read, in training and evaluation: first (FirstP) or max (MaxP)
    hybrid: bool = False  # also evaluated fused with BM25 (eval.py --hybrid bm25), the primary seed only

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
            if unknown or "name" not in entry or not ("config" in entry or "model" in entry):
                raise ValueError(f"{path}: {section}[{i}]: needs name and config (or model), knows "
                                 f"{sorted(KNOWN_RUN_KEYS)}{f'; unknown {sorted(unknown)}' if unknown else ''}")
            table = entry.get("table", "main")
            seeds = entry.get("seeds", [42]) if section == "runs" else [None]
            for j, seed in enumerate(seeds):
                name = entry["name"] if j == 0 else f"{entry['name']}-seed{seed}"
                runs.append(ProtocolRun(name, entry["name"], table, entry.get("pooled", table == "main"),
                                        entry.get("config"), entry.get("model"), seed,
                                        tuple(entry.get("overrides", ())), entry.get("held_out"),
                                        tuple(entry.get("in_domain", ())), entry.get("windows", "first"),
                                        bool(entry.get("hybrid", False))))
                if runs[-1].windows not in ("first", "max"):
                    raise ValueError(f"{path}: {section}[{i}]: windows {runs[-1].windows!r}: expected first or max")
    return protocol, runs


def seeds_of(runs: list[ProtocolRun], name: str) -> list[ProtocolRun]:
    """A run and its other-seed copies (name-seed<S>)."""
    return [r for r in runs if r.base == name]
