"""Training throughput: queries/s of full optimizer steps for the plain multi-task model and the hyper-prompt model.

Both models start from the all-MiniLM-L6-v2 weights and train on the same pre-built batches of real bbir training data
(the six training collections, mixed tasks): each query with 1 gold passage + --negatives other passages of its
collection (random ones stand in for mined hard negatives: same texts, same token lengths, same cost), tokenized by
the project's BatchBuilder (queries up to --query-length tokens, passages up to --passage-length). One step is
train.py's own (training/step.py, TrainingStep): forward of the queries (with the prompt prefix) and of the passages,
RetrievalLoss (contrastive over gold + hard + in-batch negatives with the false-negative mask, plus CPR on the prompt
attention for the hyper-prompt model), backward, gradient clipping, AdamW step with the backbone / prompt parameter
groups.

The anchor is sentence-transformers' own trainer on the same texts: `SentenceTransformerTrainer` with
MultipleNegativesRankingLoss (scale 20 = temperature 0.05; in-batch + the same hard negatives), the same MiniLM, batch
size, learning rate, clipping and passage length, each round's batches as a dataset of (anchor, positive,
negative_1..k) texts (its sampler shuffles them within the round). Its rate counts each step from `on_step_begin` to
`on_step_end` (its collator's tokenizing happens before, untimed, as our BatchBuilder's is); its first step of every
round (optimizer creation) is untimed.

Each model trains in every --dtypes (float32, or bfloat16 autocast as accelerate's mixed_precision=bf16 applies it,
on the CPU as on CUDA), a copy of its own per dtype. After --warmup untimed steps per system, --rounds rounds each
time --steps steps of every system in rotating order; the table gives each system's best and median round, its
ratio to the first (plain multi-task in the first dtype: hyper/plain, target >= 0.85, and bf16/float32) and its
median ratio to sentence-transformers' trainer in the same dtype (targets: plain >= 1.0, HypeR >= 0.9).

    python bench/train.py [--batch-size 8] [--negatives 7] [--passage-length 128] [--prompt-length 1] [--pool-size 5]
                          [--warmup 1] [--steps 2] [--rounds 3] [--threads 2] [--device auto|cpu|cuda]
                          [--dtypes float32 bfloat16] [--frozen-passages] [--keep-freed-memory] [--no-st]
    python bench/train.py --passage-length 256
    python bench/train.py --prompt-length 100
    python bench/train.py --batch-size 32 --passage-length 256    # on a GPU
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from datasets import Dataset
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from transformers import PrinterCallback, TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyper_retrieval.core.backbones import resolve_backbone  # noqa: E402
from hyper_retrieval.core.precision import resolve_dtype  # noqa: E402
from hyper_retrieval.data.beir import load_collection, split_document_key  # noqa: E402
from hyper_retrieval.training.batching import BatchBuilder, TaskData, TrainBatch  # noqa: E402
from hyper_retrieval.training.config import LossSettings, OptimSettings  # noqa: E402
from hyper_retrieval.training.examples import build_examples, first_queries  # noqa: E402
from hyper_retrieval.training.losses import RetrievalLoss  # noqa: E402
from hyper_retrieval.training.malloc_settings import keep_freed_memory  # noqa: E402
from hyper_retrieval.training.models import prompt_count  # noqa: E402
from hyper_retrieval.training.optimization import build_optimizer  # noqa: E402
from hyper_retrieval.training.step import TrainingStep  # noqa: E402
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel  # noqa: E402
from modeling_hyper.encoding_hyper import passage_text  # noqa: E402

BBIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbir"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # the pip-shipped copy when installed (requirements-weights.txt)
TRAINING_COLLECTIONS = ("nq_ckc", "vitaminc", "quoref", "drop", "cosmosqa", "qasc")


def build_batches(tokenizer, count: int, args) -> tuple[list[TrainBatch], list[list[dict[str, str]]], float]:
    """`count` mixed-task batches from the bbir training splits, the same batches as text rows (anchor, positive,
    negative_1..k) for sentence-transformers, and the seconds BatchBuilder took per batch."""
    tasks = []
    for name in TRAINING_COLLECTIONS:
        collection = first_queries(load_collection(BBIR / name, "train"), 500)
        examples = build_examples(collection, name, None, str(BBIR / name / "qrels" / "train.tsv"))
        tasks.append(TaskData(name, examples, {name: collection}))
    builder = BatchBuilder(tasks, tokenizer, args.negatives, args.query_length, args.passage_length, seed=0)
    rng = np.random.default_rng(0)
    total = int(builder.offsets[-1])
    start = time.perf_counter()
    chosen = [rng.choice(total, args.batch_size, replace=False).tolist() for _ in range(count)]
    batches = [builder(flat, step) for step, flat in enumerate(chosen)]
    seconds = (time.perf_counter() - start) / count
    corpora = {name: load_collection(BBIR / name, "train").corpus for name in TRAINING_COLLECTIONS}
    rows = []
    for flat, batch in zip(chosen, batches, strict=True):
        group = 1 + args.negatives
        texts = [passage_text(corpora[c].get_many([d])[0]) for c, d in map(split_document_key, batch.passage_keys)]
        rows.append([{"anchor": builder.example(f)[1].query, "positive": texts[i * group],
                      **{f"negative_{j}": texts[i * group + j] for j in range(1, group)}}
                     for i, f in enumerate(flat)])
    return batches, rows, seconds


class StepTimes(TrainerCallback):
    """The seconds of each optimizer step of a Hugging Face Trainer, from on_step_begin (the batch is collated) to
    on_step_end (the optimizer has stepped)."""

    def __init__(self, sync) -> None:
        self.sync, self.seconds, self._start = sync, [], 0.0

    def on_step_begin(self, args, state, control, **kwargs) -> None:
        self.sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs) -> None:
        self.sync()
        self.seconds.append(time.perf_counter() - self._start)


def st_round(backbone: str, device: torch.device, dtype: torch.dtype, args, sync, rows: list[list[dict[str, str]]]):
    """sentence-transformers' trainer as a round function: (batch numbers, scratch folder) -> the seconds of those
    batches' steps. Its first step of a round creates the optimizer, so it trains the round's first batch once more
    before them, untimed."""
    st = SentenceTransformer(backbone, device=device.type)
    st.max_seq_length = args.passage_length
    loss = MultipleNegativesRankingLoss(st, scale=20.0)

    def run(chunk: range, folder: str) -> float:
        dataset = Dataset.from_list([row for n in (chunk[0], *chunk) for row in rows[n]])
        times = StepTimes(sync)
        settings = SentenceTransformerTrainingArguments(
            output_dir=folder, max_steps=len(chunk) + 1, per_device_train_batch_size=args.batch_size,
            learning_rate=2e-5, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0,
            bf16=dtype == torch.bfloat16, use_cpu=device.type == "cpu", report_to=[], save_strategy="no",
            logging_strategy="no", disable_tqdm=True, dataloader_drop_last=True, seed=0)
        trainer = SentenceTransformerTrainer(model=st, args=settings, train_dataset=dataset, loss=loss,
                                             callbacks=[times])
        trainer.remove_callback(PrinterCallback)  # without a progress bar it prints every round's summary
        trainer.train()
        return sum(times.seconds[1:])

    return run


def trainer(accelerator: Accelerator, model: HyperRetrieverModel, num_tasks: int, dtype: torch.dtype) -> TrainingStep:
    """train.py's TrainingStep for `model`: AdamW (backbone / prompt groups, fused as train.py fuses it), RetrievalLoss,
    clipping at 1.0, the forward passes autocast to `dtype` (float32: none)."""
    settings = OptimSettings(backbone_lr=2e-5, prompt_lr=1e-3)
    precision = "no" if dtype == torch.float32 else "bf16"
    optimizer = build_optimizer(model, settings, accelerator.device, precision)
    model, optimizer = accelerator.prepare(model.train(), optimizer)
    loss = RetrievalLoss(LossSettings(contrastive_temperature=0.05), num_tasks, prompt_count(model), sparse=False)
    return TrainingStep(accelerator, model, optimizer, loss.to(accelerator.device).train(), grad_clip=1.0,
                        autocast_dtype=dtype)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8, help="queries per step")
    parser.add_argument("--negatives", type=int, default=7, help="hard negatives per query")
    parser.add_argument("--query-length", type=int, default=64)
    parser.add_argument("--passage-length", type=int, default=128)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--num-virtual-tokens", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per model")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtypes", nargs="+", choices=("auto", "float32", "bfloat16"), default=["float32", "bfloat16"],
                        help="autocast dtypes, each system trained in each; auto: bfloat16 where the device computes "
                             "it faster (hyper_retrieval/core/precision.py), else float32")
    parser.add_argument("--frozen-passages", action="store_true",
                        help="separate frozen passage encoder (the bbir configs' setting) instead of a shared one")
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="glibc mallopt: freed activations stay mapped (train.py does it on CPU)")
    parser.add_argument("--no-st", action="store_true", help="leave out sentence-transformers' trainer")
    parser.add_argument("--backbone", default=resolve_backbone(MINILM), help="MiniLM weights (folder or Hub id)")
    args = parser.parse_args()
    if args.keep_freed_memory:
        keep_freed_memory()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtypes = list(dict.fromkeys(getattr(torch, resolve_dtype(d, device)) for d in args.dtypes))
    backbone = args.backbone
    shape = {"share_encoders": False, "freeze_passage_encoder": True} if args.frozen_passages else {}
    prompt = HyperPromptConfig(pool_size=args.pool_size, num_virtual_tokens=args.num_virtual_tokens)
    hyper_name = f"hyper-prompt N={args.pool_size} L={args.num_virtual_tokens}"
    models = {"plain multi-task (no prompt)": None, hyper_name: prompt}
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision="no")  # each trainer autocasts on its own
    trainers = {f"{name} {str(dtype).removeprefix('torch.')}": trainer(
        accelerator, HyperRetrieverModel.from_backbone(backbone, hyper_prompt=pool, **shape),
        len(TRAINING_COLLECTIONS), dtype) for dtype in dtypes for name, pool in models.items()}
    tokenizer = accelerator.unwrap_model(next(iter(trainers.values())).model).tokenizer
    batches, rows, build_seconds = build_batches(tokenizer, args.warmup + args.rounds * args.steps, args)
    batches = [batch.to(device) for batch in batches]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for step in trainers.values():
        for number, batch in enumerate(batches[: args.warmup]):
            step(batch, number)
    sync()

    def ours(step: TrainingStep):
        def run(chunk: range, folder: str) -> float:
            sync()
            start = time.perf_counter()
            for number in chunk:
                step(batches[number], number)
            sync()
            return time.perf_counter() - start
        return run

    rounds = {name: ours(step) for name, step in trainers.items()}
    st_names = {}
    if not args.no_st:
        for dtype in dtypes:
            name = f"sentence-transformers trainer {str(dtype).removeprefix('torch.')}"
            st_names[dtype] = name
            rounds[name] = st_round(backbone, device, dtype, args, sync, rows)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    rates = {name: [] for name in rounds}
    names = list(rounds)
    with tempfile.TemporaryDirectory() as folder:
        for r in range(args.rounds):
            chunk = range(args.warmup + r * args.steps, args.warmup + (r + 1) * args.steps)
            for name in names[r % len(names):] + names[: r % len(names)]:
                rates[name].append(len(chunk) * args.batch_size / rounds[name](chunk, folder))
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())

    q_tokens = np.mean([b.queries["input_ids"].shape[1] for b in batches])
    p_tokens = np.mean([b.passages["input_ids"].shape[1] for b in batches])
    p_real = np.mean([b.passages["attention_mask"].sum(1).float().mean().item() for b in batches])
    encoders = "separate frozen passage encoder" if args.frozen_passages else "shared trainable encoder"
    print(f"batch {args.batch_size} queries x (1 + {args.negatives}) passages, passages padded to {p_tokens:.0f} "
          f"tokens (max {args.passage_length}, {p_real:.0f} real on average), queries {q_tokens:.0f} tokens; "
          f"{encoders}; {device.type}, {args.threads} threads")
    malloc = "glibc mallopt: freed memory kept; " if args.keep_freed_memory else ""
    print(f"{malloc}{args.warmup} warm-up + {args.rounds} rounds x {args.steps} steps per model, interleaved; "
          f"load average before {load_before}, after {load_after}; BatchBuilder "
          f"{build_seconds * 1000:.0f} ms per batch (untimed)")
    print(f"{'system':<44}{'best q/s':>10}{'median q/s':>12}{'best ratio':>12}{'median ratio':>14}{'median vs ST':>14}")
    plain = next(iter(rates))
    for name, values in rates.items():
        best, median = max(values), statistics.median(values)
        dtype = next((d for d in st_names if name.endswith(str(d).removeprefix("torch."))), None)
        anchor = rates.get(st_names.get(dtype, ""), [])
        vs_st = [v / a for v, a in zip(values, anchor, strict=True)] if anchor else []
        print(f"{name:<44}{best:>10.2f}{median:>12.2f}{best / max(rates[plain]):>12.3f}"
              f"{median / statistics.median(rates[plain]):>14.3f}"
              + (f"{statistics.median(vs_st):>14.3f}" if vs_st else ""))

if __name__ == "__main__":
    main()
