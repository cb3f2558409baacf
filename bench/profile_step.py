"""Where a train.py step spends its time: the host work of building a batch, timed apart, and torch.profiler over the
steps themselves (the same TrainingStep train.py runs, on the same data, model and settings as the config).

    python bench/profile_step.py --config configs/bbir-hyper.yaml [section.key=value ...] [--steps 20] [--warmup 3]

Prints the milliseconds of building a batch (sampling negatives, padding the pre-tokenized queries, looking passage
vectors up, hashing keys: what the prefetching thread takes off the critical path) against those of a step, so the
most that overlapping them can gain (build / step) is read off directly; then the operators by self time. On a CPU a
step is its matrix products: syncs and batch building are a few percent at most. On a GPU the table shows the host
side (launches, copies) that the no-read step removes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyper_retrieval.training.config import load_config  # noqa: E402
from hyper_retrieval.training.launch import start_accelerator  # noqa: E402
from hyper_retrieval.training.losses import RetrievalLoss  # noqa: E402
from hyper_retrieval.training.models import build_model, passage_windows, prompt_count  # noqa: E402
from hyper_retrieval.training.optimization import build_optimizer  # noqa: E402
from hyper_retrieval.training.step import TrainingStep  # noqa: E402
from hyper_retrieval.training.training_data import batch_builder, batch_sampler, load_training_data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling")
    parser.add_argument("--rows", type=int, default=15, help="operators shown")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)
    accelerator = start_accelerator(cfg)
    model = build_model(cfg.model, cfg.data.task_names)
    data = load_training_data(cfg, model, accelerator, passage_windows(cfg.model))
    sampler = batch_sampler(cfg, data)
    start = time.perf_counter()
    builder = batch_builder(cfg, data, model.tokenizer)
    tokenize_seconds = time.perf_counter() - start
    plan = iter(sampler)
    start = time.perf_counter()
    batches = [builder(next(plan), i) for i in range(args.warmup + args.steps)]
    build_ms = (time.perf_counter() - start) / len(batches) * 1000

    loss_fn = RetrievalLoss(cfg.loss, len(data.tasks), prompt_count(model), sparse=cfg.model.representation == "sparse")
    optimizer = build_optimizer(model, cfg.optim, accelerator.device, accelerator.mixed_precision)
    model, optimizer = accelerator.prepare(model.train(), optimizer)
    step = TrainingStep(accelerator, model, optimizer, loss_fn.to(accelerator.device), cfg.optim.grad_clip,
                        passage_table=data.passage_table)
    batches = [batch.to(accelerator.device) for batch in batches]
    for i, batch in enumerate(batches[: args.warmup]):
        step(batch, i)
    start = time.perf_counter()
    for i, batch in enumerate(batches[args.warmup:]):
        step(batch, args.warmup + i)
    step.check()  # one read back, as a log step does: the queued work has finished
    step_ms = (time.perf_counter() - start) / args.steps * 1000
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if accelerator.device.type == "cuda" else [])
    with profile(activities=activities) as profiler:
        for i, batch in enumerate(batches[args.warmup:]):
            step(batch, args.warmup + args.steps + i)
        step.check()
    queries, device = cfg.train.batch_size, accelerator.device.type
    looked_up = "passages looked up" if data.passage_table is not None else "passages encoded"
    print(f"{args.config}: batch {queries} queries x (1 + {cfg.data.num_negatives}) passages, {looked_up}, {device}, "
          f"{torch.get_num_threads()} threads, mixed precision {accelerator.mixed_precision}")
    print(f"training queries tokenized once: {sum(len(t.examples) for t in data.tasks)} in {tokenize_seconds:.1f} s")
    print(f"building a batch (host): {build_ms:.1f} ms; a step: {step_ms:.1f} ms ({queries / step_ms * 1000:.1f} "
          f"queries/s); building / step = {build_ms / step_ms:.3f}, the most overlapping them can gain")
    print(f"then the same {args.steps} steps again under torch.profiler:")
    sort = "self_cuda_time_total" if accelerator.device.type == "cuda" else "self_cpu_time_total"
    print(profiler.key_averages().table(sort_by=sort, row_limit=args.rows, max_name_column_width=48))


if __name__ == "__main__":
    main()
