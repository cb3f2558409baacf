"""The evaluation output folder: results.json, results.md, per-query values, runs, and side-by-side comparisons.

results.json holds ``settings`` (what was evaluated and how), ``collections`` ({name: {"zero_shot", "metrics",
"info"}}) and ``averages`` ({"in_domain", "zero_shot", "all"}: unweighted means over collections, absent if a group
is empty).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hyper_retrieval.core.atomic_files import atomic_file
from hyper_retrieval.evaluation.scoring import CollectionResult

METRICS = {"ndcg@10": "nDCG@10", "r_precision": "R-prec", "recall@20": "R@20", "recall@100": "R@100",
           "mrr@10": "MRR@10"}


class ResultsExistError(FileExistsError):
    """The output folder already holds results of a different evaluation."""


def check_output_dir(out: Path, settings: Mapping[str, Any], overwrite: bool = False) -> None:
    """Refuses an output folder whose results.json was made with different settings (unless ``overwrite``)."""
    existing = out / "results.json"
    if overwrite or not existing.exists():
        return
    previous = load_results(existing).get("settings", {})
    current = json.loads(json.dumps(settings))
    differing = sorted(key for key in set(previous) | set(current) if previous.get(key) != current.get(key))
    if differing:
        details = "; ".join(f"{key}: {previous.get(key)!r} there, {current.get(key)!r} now" for key in differing)
        raise ResultsExistError(f"{existing} holds results of a different evaluation ({details}); "
                                f"choose another --out or pass --overwrite")


def _mean_metrics(entries: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {m: float(np.mean([e[m] for e in entries])) for m in METRICS if all(m in e for e in entries)}


def group_averages(collections: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """{"in_domain", "zero_shot", "all"}: unweighted means of the metrics of results.json's collections (a group
    without collections is left out)."""
    entries = list(collections.values())
    groups = {"in_domain": [c["metrics"] for c in entries if not c["zero_shot"]],
              "zero_shot": [c["metrics"] for c in entries if c["zero_shot"]],
              "all": [c["metrics"] for c in entries]}
    return {group: _mean_metrics(metrics) for group, metrics in groups.items() if metrics}


def build_results(settings: Mapping[str, Any], results: Sequence[CollectionResult]) -> dict[str, Any]:
    """The results.json document: settings, per-collection metrics and info, and the group averages."""
    collections = {r.name: {"zero_shot": r.zero_shot, "metrics": r.metrics, "info": r.info} for r in results}
    return {"settings": dict(settings), "collections": collections, "averages": group_averages(collections)}


def _row(label: str, metrics: Mapping[str, float]) -> str:
    return f"| {label} | " + " | ".join(f"{metrics[m]:.4f}" if m in metrics else "" for m in METRICS) + " |"


def results_table(results: Mapping[str, Any]) -> str:
    """The Markdown table alone: in-domain rows, their average, zero-shot rows, their average."""
    lines = ["| collection | " + " | ".join(METRICS.values()) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for zero_shot, label in ((False, "in_domain"), (True, "zero_shot")):
        names = [n for n, c in results["collections"].items() if c["zero_shot"] == zero_shot]
        lines += [_row(name, results["collections"][name]["metrics"]) for name in names]
        if label in results["averages"]:
            lines.append(_row(f"**{label.replace('_', '-')} average**", results["averages"][label]))
    return "\n".join(lines)


def hybrid_table(hybrid: Mapping[str, Any], metric: str = "ndcg@10") -> str:
    """The fusion's variants side by side (the model alone, BM25 alone, each fusion): one metric's group averages."""
    variants = hybrid["variants"]
    groups = [g for g in ("in_domain", "zero_shot", "all") if any(g in v["averages"] for v in variants.values())]
    lines = [f"| {METRICS.get(metric, metric)} | " + " | ".join(g.replace("_", "-") for g in groups) + " |",
             "|---" * (len(groups) + 1) + "|"]
    for name, variant in variants.items():
        values = [variant["averages"].get(g, {}).get(metric) for g in groups]
        lines.append(f"| {name} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |")
    return "\n".join(lines)


def results_markdown(results: Mapping[str, Any]) -> str:
    """results.md: a title, the table (`results_table`), the fusion's variants (with --hybrid) and the settings."""
    settings = results["settings"]
    shown = {k: v for k, v in settings.items() if k not in ("model", "split")}
    title = f"# Retrieval results: {settings.get('model')} ({settings.get('split')} split)"
    parts = [title, "", results_table(results), ""]
    if "hybrid" in results:
        hybrid = results["hybrid"]
        weight = f", model weight {hybrid['weight']} ({hybrid['weight_from']})" if "weight" in hybrid else ""
        parts += [f"Fused with {hybrid['with']} by {hybrid['fusion']}{weight}; the table above is the fused run.", "",
                  hybrid_table(hybrid), ""]
    return "\n".join([*parts, "Settings: " + ", ".join(f"{k}={v}" for k, v in shown.items()), ""])


def write_trec_run(path: Path, run: Mapping[str, Mapping[str, float]], tag: str) -> None:
    """Writes a run in TREC format (``qid Q0 docid rank score tag``), best first, scores at full precision."""
    with open(path, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda item: (item[1], item[0]), reverse=True)  # trec_eval order
            f.writelines(f"{qid} Q0 {d} {i} {float(s)!r} {tag}\n" for i, (d, s) in enumerate(ranked, start=1))


def read_trec_run(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Reads a TREC-format run file back into {query id: {doc id: score}}."""
    run: dict[str, dict[str, float]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            qid, _, doc_id, _, score, _ = line.split()
            run.setdefault(qid, {})[doc_id] = float(score)
    return run


class ResultsWriteError(OSError):
    """Writing the results failed (a full disk): the message names the file; the files there before are kept."""


def write_results(out: Path, results: Mapping[str, Any], collection_results: Sequence[CollectionResult]) -> None:
    """results.json, results.md, per_query.json and runs/<collection>.trec in ``out``: each written whole under a
    temporary name first, then all renamed into place, so that a reader never sees a half-written file and a
    failure (a full disk: ResultsWriteError naming the file) leaves every file there before as it was."""
    tag = "_".join(str(results["settings"]["model"]).split())
    writes: list[tuple[Path, Callable[[Path], Any]]] = [
        *((out / "runs" / f"{r.name}.trec", lambda tmp, run=r.run: write_trec_run(tmp, run, tag))
          for r in collection_results),
        (out / "per_query.json", lambda tmp: tmp.write_text(json.dumps({r.name: r.per_query
                                                                        for r in collection_results}))),
        (out / "results.json", lambda tmp: tmp.write_text(json.dumps(results, indent=1))),
        (out / "results.md", lambda tmp: tmp.write_text(results_markdown(results))),
    ]
    path = out
    try:
        with contextlib.ExitStack() as renames:  # on leaving: every file renamed into place, or every one dropped
            for path, write in writes:
                write(renames.enter_context(atomic_file(path)))
            path = out
    except OSError as e:
        raise ResultsWriteError(f"{path}: could not be written ({type(e).__name__}: {e}); the results there before "
                                "are unchanged") from e


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """A results.json, given the file or the output folder holding it."""
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results.json (run eval.py with --out there first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a whole results.json ({e}); run eval.py there again") from None


def load_per_query(path: str | os.PathLike) -> dict[str, Any] | None:
    """The per_query.json beside a results.json (given the file or its folder), or None where there is none."""
    path = Path(path)
    path = (path.parent if path.name == "results.json" else path) / "per_query.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not a whole per_query.json ({e}); run eval.py there again") from None


def run_labels(paths: Sequence[str | os.PathLike]) -> list[str]:
    """The names compared runs go by: each output folder's name, with as many of its parent folders as it takes to
    tell the runs apart (``float32/eval/hyper`` and ``bf16/eval/hyper``, not ``hyper`` twice)."""
    folders = [(p.parent if p.name == "results.json" else p).resolve() for p in map(Path, paths)]
    repeated = sorted({str(f) for f in folders if folders.count(f) > 1})
    if repeated:
        raise ValueError(f"--compare: the same run given more than once: {repeated}")
    def labels(depth: int) -> list[str]:
        return ["/".join(f.parts[-depth:]) for f in folders]

    # distinct resolved folders differ at their full depth at the latest, so this stops
    return labels(next(d for d in itertools.count(1) if len(set(labels(d))) == len(folders)))


def compare_markdown(runs: Mapping[str, Mapping[str, Any]], metric: str = "ndcg@10") -> str:
    """Side-by-side table of one metric: a row per collection (in-domain, then zero-shot) and the group averages,
    a column per run."""
    names = list(runs)
    flags = {c: info["zero_shot"] for r in runs.values() for c, info in r["collections"].items()}
    lines = [f"# {METRICS.get(metric, metric)} side by side", "", "| collection | " + " | ".join(names) + " |",
             "|---" * (len(names) + 1) + "|"]

    def row(label: str, values: list[float | None]) -> str:
        return f"| {label} | " + " | ".join("" if v is None else f"{v:.4f}" for v in values) + " |"

    for zero_shot, group in ((False, "in_domain"), (True, "zero_shot")):
        for c in (c for c, z in flags.items() if z == zero_shot):
            lines.append(row(c + (" (zero-shot)" if zero_shot else ""),
                             [r["collections"].get(c, {}).get("metrics", {}).get(metric) for r in runs.values()]))
        if any(group in r["averages"] for r in runs.values()):
            lines.append(row(f"**{group.replace('_', '-')} average**",
                             [r["averages"].get(group, {}).get(metric) for r in runs.values()]))
    return "\n".join(lines) + "\n"


def metric_by_collection(results: Mapping[str, Any], metric: str = "ndcg@10") -> dict[str, float]:
    """{collection: value} of one metric from a results.json document."""
    return {c: info["metrics"][metric] for c, info in results["collections"].items() if metric in info["metrics"]}
