"""The run's log: log.jsonl (a record per log step and per dev evaluation), tensorboard, the progress bar."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hyper_retrieval.evaluation.routing import RoutingWindow


def truncate_log(path: Path, step: int) -> None:
    """Drops the records of steps after `step` from log.jsonl (those a resumed run will log again)."""
    if path.exists():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(f"{line}\n" for line in kept))


def append_jsonl(path: Path, record: dict) -> None:
    """Appends one JSON line (log.jsonl: a training record every log_every steps, a dev record per evaluation)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class TrainingLog:
    """What train.py reports every log_every steps: each loss term, the learning rates, queries/s since the last
    report and, for a prompt pool, the routing diagnostics of the queries since then (tensorboard, log.jsonl, bar).

    Between reports nothing is read back from the device: the step's terms and attention stay there until `write`.
    The first report of a process also records `startup_s`: the seconds from the process's start to this log's
    creation, just before the first step (imports, data, negatives, passage table, model: what a warm cache saves).
    """

    def __init__(self, accelerator: Accelerator, output_dir: Path, task_names: Sequence[str], num_prompts: int,
                 total_steps: int, first_step: int) -> None:
        self.accelerator, self.path, self.task_names = accelerator, output_dir / "log.jsonl", list(task_names)
        self.routing = RoutingWindow() if num_prompts > 1 else None  # a collapsing pool shows within a few reports
        self.startup_s: float | None = time.time() - psutil.Process().create_time()
        accelerator.print(f"ready to train {self.startup_s:.1f} s after the process started")
        self.bar = tqdm(total=total_steps, initial=first_step, desc="train",
                        disable=not accelerator.is_main_process)
        self.window_start, self.window_queries = time.perf_counter(), 0

    def add(self, attention: torch.Tensor | None, tasks: torch.Tensor) -> None:
        """One micro-batch of this process: its queries count towards queries/s, its attention (B, N) to routing."""
        self.window_queries += len(tasks) * self.accelerator.num_processes
        if self.routing is not None and attention is not None:
            self.routing.add(attention, tasks)

    def write(self, step: int, losses: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer) -> None:
        """The report of `step` from its loss terms (read back here, once)."""
        rate = self.window_queries / (time.perf_counter() - self.window_start)
        logs = {f"loss/{k}": v for k, v in zip(losses, torch.stack(list(losses.values())).tolist(), strict=True)}
        logs |= {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups} | {"queries_per_s": rate}
        if self.startup_s is not None:
            logs["startup_s"], self.startup_s = self.startup_s, None
        postfix = {"loss": f"{logs['loss/total']:.3f}", "contrastive": f"{logs['loss/contrastive']:.3f}"}
        if self.routing is not None:
            logs |= {f"routing/{k}": v for k, v in self.routing.diagnostics(self.task_names).items() if v is not None}
            postfix |= {"mi": f"{logs.get('routing/task_mi', 0):.2f}", "top": f"{logs['routing/top_share']:.2f}"}
        self.record(step, logs)
        self.bar.set_postfix(**postfix, qps=f"{rate:.1f}")
        self.window_start, self.window_queries = time.perf_counter(), 0

    def record(self, step: int, values: dict[str, float]) -> None:
        """`values` of `step` to tensorboard and (main process) log.jsonl."""
        self.accelerator.log(values, step=step)
        if self.accelerator.is_main_process:
            append_jsonl(self.path, {"step": step, **values})
