"""Multi-task sampler: task shares follow the temperature, homogeneous batches, determinism, resume, 2 processes."""

import json
from pathlib import Path

import numpy as np
import pytest
from processes import REPO, torchrun_two

from hyper_retrieval.training.sampler import MultiTaskBatchSampler, task_probabilities

SIZES = [1000, 300, 50]


def batch_tasks(sampler: MultiTaskBatchSampler) -> list[np.ndarray]:
    return [sampler.task_of(b) for b in sampler]


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_mixed_task_shares_follow_temperature(temperature: float) -> None:
    sampler = MultiTaskBatchSampler(SIZES, batch_size=16, mode="mixed", temperature=temperature, seed=0)
    tasks = np.concatenate(batch_tasks(sampler))
    shares = np.bincount(tasks, minlength=3) / len(tasks)
    expected = np.power(SIZES, 1 / temperature) / np.power(SIZES, 1 / temperature).sum()
    np.testing.assert_allclose(shares, expected, atol=2e-3)
    np.testing.assert_allclose(task_probabilities(SIZES, temperature), expected)
    if temperature == 1.0:  # the paper: tasks concatenated and shuffled, each example at most once per epoch
        flat = np.concatenate(list(sampler))
        assert len(np.unique(flat)) == len(flat) == sum(SIZES) // 16 * 16
    # batches do mix tasks
    assert sum(len(np.unique(t)) > 1 for t in batch_tasks(sampler)) > len(sampler) // 2


def test_homogeneous_batches_are_single_task_and_shares_follow_temperature() -> None:
    counts = np.zeros(3)
    for epoch in range(20):
        sampler = MultiTaskBatchSampler(SIZES, batch_size=10, mode="homogeneous", temperature=3.0, seed=1)
        sampler.set_epoch(epoch)
        for tasks in batch_tasks(sampler):
            assert len(np.unique(tasks)) == 1
            counts[tasks[0]] += 1
    expected = task_probabilities(SIZES, 3.0)
    np.testing.assert_allclose(counts / counts.sum(), expected, atol=0.01)
    assert counts[2] / counts.sum() > 2 * SIZES[2] / sum(SIZES)  # the small task is upsampled


def test_same_seed_same_batches_and_epochs_differ() -> None:
    def epoch(seed: int, e: int) -> list[list[int]]:
        sampler = MultiTaskBatchSampler(SIZES, batch_size=8, mode="homogeneous", seed=seed)
        sampler.set_epoch(e)
        return list(sampler)

    assert epoch(3, 2) == epoch(3, 2)
    assert epoch(3, 2) != epoch(4, 2)
    assert epoch(3, 2) != epoch(3, 3)


@pytest.mark.parametrize("mode", ["mixed", "homogeneous"])
def test_resume_continues_the_exact_sequence(mode: str) -> None:
    full = MultiTaskBatchSampler(SIZES, batch_size=8, mode=mode, temperature=2.0, seed=5)
    full.set_epoch(4)
    batches = list(full)
    resumed = MultiTaskBatchSampler(SIZES, batch_size=8, mode=mode, temperature=2.0, seed=5)
    resumed.set_epoch(4)
    resumed.skip(37)
    assert len(resumed) == len(batches) - 37
    assert list(resumed) == batches[37:]
    resumed.set_epoch(5)  # the next epoch starts from its first batch
    assert len(list(resumed)) == len(batches)


def test_rank_slices_partition_the_global_batch() -> None:
    ranks = [MultiTaskBatchSampler(SIZES, batch_size=4, mode="homogeneous", seed=2, num_replicas=3, rank=r)
             for r in range(3)]
    plan = ranks[0].global_plan()
    for step, parts in enumerate(zip(*ranks, strict=True)):
        assert sum(parts, []) == plan[step].tolist()


@pytest.mark.slow
def test_two_processes_are_on_the_same_task_at_every_step(tmp_path: Path) -> None:
    torchrun_two(REPO / "tests" / "dist_sampler_check.py", str(tmp_path))
    ranks = [json.loads((tmp_path / f"sampler-rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    offsets = np.cumsum([0, 50, 30, 20])
    for key in ("sliced", "accelerate"):
        steps = list(zip(ranks[0][key], ranks[1][key], strict=True))
        assert len(steps) == 100 // 8
        for batch0, batch1 in steps:
            tasks0 = np.searchsorted(offsets, batch0, side="right") - 1
            tasks1 = np.searchsorted(offsets, batch1, side="right") - 1
            assert len(set(tasks0) | set(tasks1)) == 1, (key, batch0, batch1)
            assert len(batch0) == len(batch1) == 4
    # both set-ups follow the same global plan
    assert ranks[0]["sliced"] == ranks[0]["accelerate"] and ranks[1]["sliced"] == ranks[1]["accelerate"]
