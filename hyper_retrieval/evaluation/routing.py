"""Routing diagnostics: how a prompt pool is used, from the per-query attention (n, N) and each query's task.

One function, `routing_diagnostics`, used by train.py (every log step), eval.py (per collection and over all),
the protocol report and the model card, so a collapsed pool reads the same everywhere:

- entropy: mean over queries of H(a_i) / ln N (1: every query mixes the pool uniformly; 0: one prompt each);
- top_share: share of queries whose top prompt is the commonest top prompt (1: one prompt for all queries);
- task_mi: mutual information between task and top prompt over H(task) (plug-in estimate from the counts; 0: the
  top prompt says nothing about the task, 1: it tells the task); None with fewer than two tasks;
- common_variance: the share of logit variance common to all queries. The logits are taken as log a (softmax
  ignores a per-query shift, so each row is centred first); row i is then c + r_i, with c the mean row: the share
  is n |c|^2 / sum_i |c + r_i|^2 (1: every query ranks the prompts alike);
- task_js: mean Jensen-Shannon divergence (nats) between the tasks' mean attentions; None with fewer than two tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

_EPS = 1e-12


def _entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of p (..., N)."""
    p = np.clip(p, _EPS, None)
    return -(p * np.log(p)).sum(axis=-1)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in nats between two distributions (N,)."""
    value = float(_entropy(0.5 * (p + q)) - 0.5 * (_entropy(p) + _entropy(q)))
    return value if value > 1e-15 else 0.0  # identical distributions: rounding noise, not a divergence


def routing_diagnostics(attention: np.ndarray, tasks: Sequence) -> dict[str, float | None]:
    """attention (n, N) rows summing to 1, tasks (n,) any hashable labels -> the diagnostics above (floats)."""
    attention = np.asarray(attention, dtype=np.float64)
    if attention.ndim != 2 or len(attention) == 0 or len(attention) != len(tasks):
        raise ValueError(f"routing_diagnostics: attention {attention.shape} and {len(tasks)} task labels: "
                         "expected a non-empty (n, N) array and n labels")
    n, num_prompts = attention.shape
    if num_prompts < 2:
        raise ValueError("routing_diagnostics: a pool of one prompt has no routing")
    entropy = float(_entropy(attention).mean() / np.log(num_prompts))
    top = attention.argmax(axis=1)
    top_share = float(np.bincount(top, minlength=num_prompts).max() / n)

    logits = np.log(np.clip(attention, _EPS, None))
    logits -= logits.mean(axis=1, keepdims=True)
    common = logits.mean(axis=0)
    total = float((logits**2).sum())
    common_variance = float(n * (common**2).sum() / total) if total > 0 else 1.0

    labels, task_ids = np.unique(np.asarray(tasks, dtype=object).astype(str), return_inverse=True)
    task_mi = task_js = None
    if len(labels) > 1:
        joint = np.zeros((len(labels), num_prompts))
        np.add.at(joint, (task_ids, top), 1.0)
        joint /= n
        p_task, p_top = joint.sum(axis=1), joint.sum(axis=0)
        nonzero = joint > 0
        mi = float((joint[nonzero] * np.log(joint[nonzero] / np.outer(p_task, p_top)[nonzero])).sum())
        task_mi = max(mi / float(_entropy(p_task)), 0.0)  # the plug-in MI is >= 0 up to rounding
        means = np.stack([attention[task_ids == t].mean(axis=0) for t in range(len(labels))])
        pairs = [(a, b) for a in range(len(labels)) for b in range(a + 1, len(labels))]
        task_js = float(np.mean([js_divergence(means[a], means[b]) for a, b in pairs]))
    return {"entropy": entropy, "top_share": top_share, "task_mi": task_mi, "common_variance": common_variance,
            "task_js": task_js}


def routing_by_collection(attention: np.ndarray, labels: Sequence[str], zero_shot: set[str]) -> dict:
    """results.json's "routing": diagnostics per collection, over the in-domain collections (their names as tasks),
    and over all of them. attention (n, N), labels (n,) the collection of each query."""
    labels = np.asarray(labels)
    in_domain = ~np.isin(labels, sorted(zero_shot))
    routing = {"collections": {str(name): routing_diagnostics(attention[labels == name], labels[labels == name])
                               for name in dict.fromkeys(labels.tolist())}}
    if in_domain.any():
        routing["in_domain"] = routing_diagnostics(attention[in_domain], labels[in_domain])
    routing["all"] = routing_diagnostics(attention, labels)
    return routing


class RoutingWindow:
    """The attention and tasks of the queries seen since the last log step (all processes), for train.py."""

    def __init__(self) -> None:
        self.attention: list[torch.Tensor] = []
        self.tasks: list[torch.Tensor] = []

    def add(self, attention: torch.Tensor, tasks: torch.Tensor) -> None:
        """This process's attention (B, N) and task ids (B,), gathered across processes; kept on the device until
        :meth:`diagnostics` reads the window back (at a log step), so a step never waits for the copy."""
        from accelerate.utils import gather

        self.attention.append(gather(attention.detach().float()))
        self.tasks.append(gather(tasks))

    def diagnostics(self, task_names: Sequence[str]) -> dict[str, float | None]:
        """routing_diagnostics over the window, which is then emptied."""
        import torch

        attention, tasks = torch.cat(self.attention).cpu().numpy(), torch.cat(self.tasks).tolist()
        self.attention, self.tasks = [], []
        return routing_diagnostics(attention, [task_names[t] for t in tasks])
