"""Multi-task batch sampling: mixed (the paper) or task-homogeneous batches, with temperature over tasks.

Indices are flat positions in the concatenation of the task example lists, in the given task order (what
`torch.utils.data.ConcatDataset(task_lists)` indexes). Each epoch has `sum(n_t) // global_batch` batches, where
global_batch = batch_size * num_replicas. The share of task t is p_t ~ n_t^(1/T): T = 1 is proportional to
size, larger T flattens towards uniform. A task given more slots than it has examples is cycled through
(a fresh permutation per pass); one given fewer has a random subset used.

- mixed: every slot of every batch draws its task from p_t (exact counts by largest remainder, then shuffled).
  With T = 1 this is the paper's recipe: the tasks concatenated and shuffled, each example once per epoch.
- homogeneous: every global batch comes from a single task; the number of batches per task follows p_t.

Deterministic given (seed, epoch). Every process computes the same global plan and takes its own slice
(rank * batch_size ... (rank + 1) * batch_size) of each global batch, so at every step all ranks are on the same
task when batches are homogeneous. Two ways to use it under several processes:
- pass num_replicas / rank and do not let Accelerate shard the DataLoader (`accelerator.prepare` would shard
  it again), or
- use num_replicas=1 with batch_size = global batch and `DataLoaderConfiguration(split_batches=True)`, which
  splits each global batch across ranks (the default, split_batches=False, would give ranks different batches).
Resume: `set_epoch(e)` then `skip(k)` yields batches k, k+1, ... of epoch e: exactly the rest of the sequence.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np


def task_probabilities(task_sizes: Sequence[int], temperature: float) -> np.ndarray:
    """p_t proportional to n_t^(1/temperature), shape (num_tasks,)."""
    sizes = np.asarray(task_sizes, dtype=np.float64)
    weights = sizes ** (1.0 / temperature)
    return weights / weights.sum()


def _apportion(probabilities: np.ndarray, total: int) -> np.ndarray:
    """Integer counts (num_tasks,) summing to `total`, as close to probabilities * total as possible."""
    exact = probabilities * total
    counts = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - counts), kind="stable")
    counts[remainder_order[: total - counts.sum()]] += 1
    return counts


def _stream(rng: np.random.Generator, size: int, length: int) -> np.ndarray:
    """`length` indices into range(size): fresh permutations back to back, shape (length,)."""
    passes = -(-length // size)
    if passes == 0:
        return np.empty(0, dtype=np.int64)
    return np.concatenate([rng.permutation(size) for _ in range(passes)])[:length]


class MultiTaskBatchSampler:
    """Yields this rank's list of flat example indices for each step of an epoch (a DataLoader batch_sampler)."""

    def __init__(self, task_sizes: Sequence[int], batch_size: int, mode: Literal["mixed", "homogeneous"] = "mixed",
                 temperature: float = 1.0, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        """task_sizes: examples per task; batch_size: per process; num_replicas/rank: this process's place."""
        if mode not in ("mixed", "homogeneous"):
            raise ValueError(f"mode must be 'mixed' or 'homogeneous', got {mode!r}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside 0..{num_replicas - 1}")
        if min(task_sizes, default=0) < 1:
            raise ValueError(f"every task needs at least one example, got sizes {list(task_sizes)}")
        self.task_sizes = list(task_sizes)
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.probabilities = task_probabilities(task_sizes, temperature)
        self.offsets = np.cumsum([0, *self.task_sizes])  # (num_tasks + 1,) first flat index of each task
        self.global_batch = batch_size * num_replicas
        self.num_batches = sum(self.task_sizes) // self.global_batch
        if self.num_batches == 0:
            raise ValueError(f"{sum(self.task_sizes)} examples make no full global batch of {self.global_batch}")
        self.epoch = 0
        self.start = 0

    def __len__(self) -> int:
        return self.num_batches - self.start

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose plan the next iteration yields, from its first batch."""
        self.epoch = epoch
        self.start = 0

    def skip(self, num_batches: int) -> None:
        """Start the next iteration of the current epoch at batch `num_batches` (for resuming)."""
        if not 0 <= num_batches <= self.num_batches:
            raise ValueError(f"cannot skip {num_batches} of {self.num_batches} batches")
        self.start = num_batches

    def task_of(self, flat_indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """Task index of each flat example index, same shape."""
        return np.searchsorted(self.offsets, np.asarray(flat_indices), side="right") - 1

    def global_plan(self) -> np.ndarray:
        """The current epoch's global batches, shape (num_batches, global_batch), flat indices."""
        rng = np.random.default_rng([self.seed, self.epoch])
        num_tasks = len(self.task_sizes)
        if self.mode == "mixed":
            slot_tasks = np.repeat(np.arange(num_tasks), _apportion(self.probabilities, self.num_batches
                                                                    * self.global_batch))
            slot_tasks = rng.permutation(slot_tasks)
        else:
            batch_tasks = rng.permutation(np.repeat(np.arange(num_tasks),
                                                    _apportion(self.probabilities, self.num_batches)))
            slot_tasks = np.repeat(batch_tasks, self.global_batch)
        plan = np.empty(len(slot_tasks), dtype=np.int64)
        for t in range(num_tasks):
            slots = np.flatnonzero(slot_tasks == t)
            plan[slots] = self.offsets[t] + _stream(rng, self.task_sizes[t], len(slots))
        return plan.reshape(self.num_batches, self.global_batch)

    def __iter__(self) -> Iterator[list[int]]:
        local = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        for batch in self.global_plan()[self.start:]:
            yield batch[local].tolist()
