"""PNG figures for evaluation results: per-collection bars, prompt-attention heat map and 2-D projection.

Every figure has a fixed size in inches and is saved at ``dpi``, so the PNG is ``figsize * dpi`` pixels.
matplotlib is imported when a figure is drawn, not with this module: the GPU image has none, and the evaluation and
reports that run there (eval.py --no-plots, the gpu section) import this module for its tables' helpers.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGSIZE = (8.0, 5.0)
DPI = 100


def pyplot():
    """matplotlib.pyplot on the Agg backend (files, no display); a clear error where matplotlib is not installed."""
    try:
        import matplotlib
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError("drawing the figures needs matplotlib (pip install matplotlib); eval.py --no-plots "
                                  "evaluates without them", name="matplotlib") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _subplots(*args, **kwargs):
    return pyplot().subplots(*args, **kwargs)


def _save(fig: Figure, path: str | os.PathLike, dpi: int) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    pyplot().close(fig)
    return path


def plot_collection_bars(scores: Mapping[str, Mapping[str, float]], path: str | os.PathLike, metric: str = "nDCG@10",
                         figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI) -> Path:
    """Grouped bars: one group per collection, one bar per run. ``scores`` is {run name: {collection: value}};
    a collection missing from a run gets no bar."""
    groups, values = bar_values(scores)
    runs = list(values)
    width = 0.8 / max(len(runs), 1)
    x = np.arange(len(groups))
    fig, ax = _subplots(figsize=figsize)
    for i, run in enumerate(runs):
        bars = ax.bar(x + (i - (len(runs) - 1) / 2) * width, values[run], width, label=run)
        ax.bar_label(bars, fmt="%.2f", fontsize=6, padding=1)
    ax.axvline(len(groups) - 1.5, color="grey", linewidth=0.8)  # the average bars stand apart
    ax.set_xticks(x, groups, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_ylim(0, 1)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)


def bar_values(scores: Mapping[str, Mapping[str, float]]) -> tuple[list[str], dict[str, list[float]]]:
    """The bar chart's groups (collections in first-seen order, then "average") and each run's values (nan where a
    run lacks a collection; its average is over the collections it has)."""
    collections = list(dict.fromkeys(c for run in scores.values() for c in run))
    values = {run: [by_collection.get(c, np.nan) for c in collections] + [float(np.mean(list(by_collection.values())))]
              for run, by_collection in scores.items()}
    return [*collections, "average"], values


def mean_attention_by_task(attention: np.ndarray, task_labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Tasks in first-seen order and the mean attention (n_tasks, N) of their queries over the N pool prompts."""
    attention = np.asarray(attention, dtype=np.float64)
    labels = np.asarray(task_labels)
    if attention.ndim != 2 or len(labels) != len(attention):
        raise ValueError(f"need attention (n_queries, N) and one label per query, got {attention.shape}, {len(labels)}")
    tasks = list(dict.fromkeys(labels.tolist()))
    return tasks, np.stack([attention[labels == t].mean(axis=0) for t in tasks])


def plot_attention_heatmap(attention: np.ndarray, task_labels: Sequence[str], path: str | os.PathLike,
                           figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI) -> Path:
    """Heat map of the mean prompt attention per task: rows tasks, columns the N prompts of the pool."""
    tasks, means = mean_attention_by_task(attention, task_labels)
    fig, ax = _subplots(figsize=figsize)
    image = ax.imshow(means, aspect="auto", cmap="viridis")
    ax.set_yticks(np.arange(len(tasks)), tasks)
    ax.set_xlabel("prompt in the pool")
    ax.set_title("mean prompt attention per task")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    return _save(fig, path, dpi)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Projection (n, 2) of the rows of x (n, d) on their first two principal components (zeros past rank)."""
    centred = np.asarray(x, dtype=np.float64) - np.mean(x, axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    return np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))


COLLAPSED_SPREAD = 1e-6  # attention whose coordinates vary less than this across queries is one point


def is_collapsed(attention: np.ndarray) -> bool:
    """True when all queries' attention vectors (n, N) are the same up to rounding (a collapsed pool)."""
    attention = np.asarray(attention, dtype=np.float64)
    return bool(np.ptp(attention, axis=0).max(initial=0.0) < COLLAPSED_SPREAD)


def plot_attention_projection(attention: np.ndarray, task_labels: Sequence[str], path: str | os.PathLike,
                              figsize: tuple[float, float] = FIGSIZE, dpi: int = DPI) -> Path:
    """Scatter of per-query attention vectors (n_queries, N) projected by PCA to 2-D, coloured by task."""
    tasks, _ = mean_attention_by_task(attention, task_labels)
    collapsed = is_collapsed(attention)
    points = np.zeros((len(attention), 2)) if collapsed else pca_2d(attention)  # no rounding noise drawn as shape
    labels = np.asarray(task_labels)
    fig, ax = _subplots(figsize=figsize)
    for task in tasks:
        ax.scatter(*points[labels == task].T, s=8, alpha=0.7, label=task)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    if collapsed:
        ax.set(xlim=(-1, 1), ylim=(-1, 1))
        ax.set_title(f"collapsed: every query has the same attention (spread < {COLLAPSED_SPREAD:g})")
    else:
        ax.set_title("per-query prompt attention (PCA)")
    ax.legend(fontsize="small", markerscale=2)
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_training_curves(logs: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike,
                         dev_metric: str = "dev/ndcg@10", figsize: tuple[float, float] = (10.0, 4.0),
                         dpi: int = DPI) -> Path:
    """Two panels per run: the contrastive loss against the step (log.jsonl training records) and the dev metric
    at each evaluation (its dev records). ``logs`` is {run name: records of its log.jsonl}."""
    fig, (loss_ax, dev_ax) = _subplots(1, 2, figsize=figsize)
    for name, records in logs.items():
        train = [r for r in records if "loss/contrastive" in r]
        dev = [r for r in records if dev_metric in r]
        loss_ax.plot([r["step"] for r in train], [r["loss/contrastive"] for r in train], label=name)
        dev_ax.plot([r["step"] for r in dev], [r[dev_metric] for r in dev], marker="o", label=name)
    loss_ax.set(xlabel="step", ylabel="contrastive loss", title="training loss")
    dev_ax.set(xlabel="step", ylabel=dev_metric, title="dev selection metric")
    dev_ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)


ROUTING_PANELS = (("routing/task_mi", "MI(task; top prompt) / H(task)"), ("routing/top_share", "commonest top prompt"),
                  ("routing/entropy", "entropy / ln N"))


def plot_routing_curves(logs: Mapping[str, Sequence[Mapping[str, float]]], path: str | os.PathLike,
                        figsize: tuple[float, float] = (13.0, 4.0), dpi: int = DPI) -> Path:
    """Three panels, one line per run: the routing diagnostics train.py logs (hyper_retrieval.evaluation.routing)
    against the step. ``logs`` is {run name: records of its log.jsonl}; runs that logged none are skipped."""
    fig, axes = _subplots(1, len(ROUTING_PANELS), figsize=figsize)
    for name, records in logs.items():
        for ax, (key, _) in zip(axes, ROUTING_PANELS, strict=True):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points, strict=True), label=name)
    for ax, (_, title) in zip(axes, ROUTING_PANELS, strict=True):
        ax.set(xlabel="step", title=title, ylim=(-0.02, 1.02))
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)


def plot_gap_curve(lines: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike,
                   ylabel: str = "HypeR − multi-task, nDCG@10 × 100", figsize: tuple[float, float] = FIGSIZE,
                   dpi: int = DPI) -> Path:
    """One line per group ({label: [(steps, difference), ...]}), every point labelled, over training steps on a log
    axis, with the zero line: where a difference between two systems goes as training gets longer."""
    fig, ax = _subplots(figsize=figsize)
    for label, points in lines.items():
        steps, values = zip(*sorted(points), strict=True) if points else ((), ())
        ax.plot(steps, values, marker="o", label=label)
        for x, y in zip(steps, values, strict=True):
            ax.annotate(f"{y:+.2f}", (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ticks = sorted({x for points in lines.values() for x, _ in points})
    ax.set_xticks(ticks, [f"{x:,}" for x in ticks])  # the lengths measured, not powers of ten
    ax.minorticks_off()
    ax.set(xlabel="training steps (batch 32)", ylabel=ylabel)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path, dpi)
