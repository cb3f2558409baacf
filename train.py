"""Multi-task hyper-prompted training of a HypeR retriever.

    python train.py --config configs/quickstart.yaml [section.key=value ...] [--resume]
    accelerate launch train.py --config configs/bbir-hyper.yaml
    accelerate launch --config_file configs/accelerate/multi-gpu.yaml train.py --config configs/bbir-hyper.yaml

Mixed precision comes from the launcher (`accelerate launch --mixed_precision bf16`, `accelerate config`) unless the
YAML sets optim.mixed_precision, which then wins.

Writes to train.output_dir: checkpoints/step_N (resumable; the newest two kept), best/ (by the dev metric),
final/ (save_pretrained: loads with AutoModel.from_pretrained(dir, trust_remote_code=True)), adapter/ (the
hyper-prompt alone), train_config.yaml, log.jsonl (every logged loss term, learning rate and throughput) and
tensorboard logs. SIGTERM/SIGINT save a checkpoint before exiting.

train.output_dir is locked for the whole run (the main process holds .<name>.lock beside it: a second train.py on it
stops at once, naming the first). It never lies inside another run, a checkpoint, a model, an export or an
evaluation, nor is or holds an input (model.backbone, data.collections). A fresh start refuses a folder holding
another run's traces (checkpoints, final/, best/, log.jsonl, an evaluation...; --resume continues it, --move-aside
keeps it beside); a run killed before its first checkpoint, started again with the same config, starts over from
step 0 with its log.jsonl afresh.
"""

import argparse
import math
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from hyper_retrieval.cli.options import POSITIVE, run_main
from hyper_retrieval.core.atomic_files import swap_folder
from hyper_retrieval.core.folder_lock import FolderBusyError, lock_folder
from hyper_retrieval.core.precision import resolve_mixed_precision
from hyper_retrieval.core.run_folders import RunFolderError, moved_aside_name, training_output_plan
from hyper_retrieval.core.strict_yaml import dump_yaml
from hyper_retrieval.evaluation.routing import RoutingWindow
from hyper_retrieval.training.batching import BatchBuilder, TaskData
from hyper_retrieval.training.checkpoints import (
    latest_checkpoint,
    list_checkpoints,
    resume,
    save_checkpoint,
)
from hyper_retrieval.training.config import ConfigError, load_config
from hyper_retrieval.training.examples import false_negative_mask, load_task_examples
from hyper_retrieval.training.losses import RetrievalLoss
from hyper_retrieval.training.malloc_settings import keep_freed_memory
from hyper_retrieval.training.passage_table import PassageTable, has_frozen_passage_encoder
from hyper_retrieval.training.sampler import MultiTaskBatchSampler
from hyper_retrieval.training.setup import (
    CALIBRATION_QUERIES,
    TrainState,
    append_jsonl,
    build_model,
    dev_score,
    load_dev_collections,
    passage_windows,
    sample_queries,
    truncate_log,
)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.max_steps=100")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in output_dir")
    parser.add_argument("--move-aside", action="store_true",
                        help="output_dir holds another run: rename it to <output_dir>.old-<time> and start afresh")
    parser.add_argument("--stop-after-steps", type=POSITIVE, default=None,
                        help="save a checkpoint and exit after this many steps, as SIGTERM would (tests, time boxes)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        sys.exit(f"config error: {e}")
    out = Path(cfg.train.output_dir)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(cfg.optim.mixed_precision, device),
        gradient_accumulation_steps=cfg.optim.grad_accum,
        log_with="tensorboard",
        project_dir=str(out),
    )
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device.type}, mixed precision "
                      f"{accelerator.mixed_precision}" + (" (from the launcher)" if cfg.optim.mixed_precision is None
                                                         else f" (from the config: {cfg.optim.mixed_precision})"))
    set_seed(cfg.train.seed)
    if accelerator.device.type == "cpu":
        keep_freed_memory()  # freed activations stay mapped between steps: +10-40% on CPU (bench/train.py)
    # ---- one writer per run folder: the main process locks it for the whole run and alone decides how it is used
    # (training_output_plan): never inside another run, a checkpoint, a model, an export or an evaluation, never over
    # an input; a fresh start needs no other run's traces there (or --move-aside); --resume needs a checkpoint
    lock, plan = None, None
    if accelerator.is_main_process:
        try:
            lock = lock_folder(out, check=lambda: training_output_plan(
                out, resume=args.resume, move_aside=args.move_aside, config=dump_yaml(cfg.to_dict()),
                inputs={"model.backbone": [cfg.model.backbone],
                        "data.collections": [c.path for c in cfg.data.collections]}))
            plan = lock.checked
        except (FolderBusyError, RunFolderError) as e:
            plan = f"train.py: {e}"
    if accelerator.num_processes > 1:
        plan = broadcast_object_list([plan])[0]  # the other processes follow the main one's plan, or stop with it
    if plan not in ("fresh", "resume", "move-aside", "restart"):
        sys.exit(plan)
    if plan == "move-aside" and accelerator.is_main_process:
        aside = moved_aside_name(out)
        out.rename(aside)  # the lock stays: it is on the folder's name (a file beside it), not in it
        accelerator.print(f"moved the earlier run to {aside}")
    if plan == "restart" and accelerator.is_main_process:  # each step logged once: the killed attempt's rows go
        truncate_log(out / "log.jsonl", 0)
        accelerator.print(f"{out}: this run was stopped before its first checkpoint; starting over from step 0 "
                          "(its log.jsonl afresh)")
    accelerator.wait_for_everyone()
    if args.resume and not list_checkpoints(out):
        sys.exit(f"train.py --resume: no checkpoint in {out / 'checkpoints'} to continue from (start without --resume: "
                 "a run stopped before its first checkpoint starts over from step 0)")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)

    # ---- the model first: it may mine the hard negatives
    model = build_model(cfg.model, cfg.data.task_names)
    windows = passage_windows(cfg.model)  # how passages are read: in training (passage table), dev and test alike
    if cfg.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable()

    # ---- data: examples per task; hard negatives mined once, with BM25 or the initial model (main process first,
    # the others then read the cache)
    task_names = cfg.data.task_names
    tasks = {name: TaskData(name, [], {}) for name in task_names}
    corpora = {}
    with accelerator.main_process_first():
        for coll in cfg.data.collections:
            collection, examples = load_task_examples(coll, cfg.data, model, cfg.model.backbone)
            tasks[coll.task_name].examples.extend(examples)
            tasks[coll.task_name].collections[collection.name] = collection
            corpora[coll.path] = collection.corpus
        dev_collections = load_dev_collections(cfg.data, corpora)
        # A frozen passage encoder gives fixed vectors: each training corpus is encoded once, then looked up.
        passage_table = None
        if has_frozen_passage_encoder(model):
            passage_table = PassageTable(model.to(accelerator.device),
                                         {n: c.corpus for t in tasks.values() for n, c in t.collections.items()},
                                         cfg.train.embedding_cache_dir, show_progress=accelerator.is_main_process,
                                         windows=windows)
    accelerator.print(", ".join(f"{t.name}: {len(t.examples)} queries" for t in tasks.values()))

    # ---- optimizer (backbone and prompt learning rates really differ), sampler, schedule, losses
    tokenizer = model.tokenizer
    optimizer = torch.optim.AdamW(model.parameter_groups(cfg.optim.backbone_lr, cfg.optim.prompt_lr,
                                                         cfg.optim.weight_decay))
    sampler = MultiTaskBatchSampler([len(t.examples) for t in tasks.values()], cfg.train.batch_size,
                                    cfg.data.sampling, cfg.data.task_sampling_temperature, cfg.train.seed,
                                    num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    micro_per_epoch = len(sampler)
    total_steps = cfg.optim.max_steps or cfg.optim.epochs * micro_per_epoch // cfg.optim.grad_accum
    scheduler = get_linear_schedule_with_warmup(optimizer, cfg.optim.warmup_for(total_steps), total_steps)
    num_prompts = model.hyper_prompt.config.pool_size if model.hyper_prompt is not None else 1
    loss_fn = RetrievalLoss(cfg.loss, len(task_names), num_prompts, sparse=cfg.model.representation == "sparse")
    builder = BatchBuilder(list(tasks.values()), tokenizer, cfg.data.num_negatives, cfg.model.max_query_length,
                           cfg.model.max_passage_length, cfg.train.seed, tokenize_passages=passage_table is None)
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = loss_fn.to(accelerator.device)
    state = TrainState()

    def run_state() -> tuple[dict, dict]:
        """What a checkpoint holds beside accelerate's state: JSON counters and schedule, the loss's tensors."""
        return {"train": state.state_dict(), "scheduler": scheduler.state_dict()}, loss_fn.state_dict()

    def restore(saved: dict, tensors: dict) -> None:
        state.load_state_dict(saved["train"])
        scheduler.load_state_dict(saved["scheduler"])
        loss_fn.load_state_dict({k: v.to(accelerator.device) for k, v in tensors.items()})

    if args.resume:
        checkpoint, skipped = resume(accelerator, out, restore)
        if checkpoint is None:  # stop, changing nothing: the checkpoints, log and config stay as they are
            sys.exit(f"train.py --resume: no usable checkpoint in {out / 'checkpoints'}; nothing was changed.\n"
                     + "\n".join(skipped))
        for line in skipped:
            accelerator.print(f"--resume: {line}")
        accelerator.print(f"resumed from {checkpoint} at step {state.step}")
        if accelerator.is_main_process:  # the log goes on from the checkpoint: no step twice
            truncate_log(out / "log.jsonl", state.step)
    if accelerator.is_main_process:
        (out / "train_config.yaml").write_text(dump_yaml(cfg.to_dict()))
    if accelerator.is_main_process:
        accelerator.init_trackers("hyper", config={k: str(v) for k, v in cfg.to_dict().items()})

    stop = {"signal": None}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.update(signal=signal.Signals(signum).name))

    # ---- the loop: one optimizer step = grad_accum micro-batches; the sampler position follows state.micro_step
    model.train()
    bar = tqdm(total=total_steps, initial=state.step, desc="train", disable=not accelerator.is_main_process)
    window_start, window_queries = time.perf_counter(), 0
    routing = RoutingWindow() if num_prompts > 1 else None  # the attention of the queries since the last log
    # The synthesizer's running statistics are set exactly from these before each evaluation and the final save.
    calibration_queries = sample_queries(list(tasks.values()), CALIBRATION_QUERIES, cfg.train.seed)
    while state.step < total_steps:
        epoch, position = divmod(state.micro_step, micro_per_epoch)
        sampler.set_epoch(epoch)
        sampler.skip(position)
        for indices in sampler:
            batch = builder(indices, state.micro_step, accelerator.process_index).to(accelerator.device)
            with accelerator.accumulate(model):
                q = model(**batch.queries, is_query=True, task_ids=batch.tasks)
                p, window_mask = (passage_table.lookup(batch.passage_keys) if passage_table is not None
                                  else (model(**batch.passages, is_query=False).embeddings, None))
                p = p.to(accelerator.device)
                window_mask = window_mask.to(accelerator.device) if window_mask is not None else None
                all_keys = gather_object(batch.passage_keys) if accelerator.num_processes > 1 else batch.passage_keys
                offset = accelerator.process_index * len(batch.passage_keys)
                exclude = false_negative_mask(batch.positives, all_keys, (batch.targets + offset).tolist())
                losses = loss_fn(q.embeddings, p, batch.targets, step=state.step, attention=q.prompt_attention,
                                 tasks=batch.tasks, exclude=exclude.to(accelerator.device), logits=q.prompt_logits,
                                 window_mask=window_mask)
                if routing is not None:
                    routing.add(q.prompt_attention, batch.tasks)
                if not torch.isfinite(losses["total"]):
                    good = latest_checkpoint(out)
                    terms = {k: float(v) for k, v in losses.items()}
                    sys.exit(f"non-finite loss at step {state.step}: {terms}. Stopped; the last good checkpoint is "
                             f"{good} (resume with --resume, perhaps with a lower learning rate or fp32)")
                accelerator.backward(losses["total"])
                if accelerator.sync_gradients and cfg.optim.grad_clip > 0:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            state.micro_step += 1
            window_queries += len(indices) * accelerator.num_processes
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            state.step += 1
            bar.update(1)

            if state.step % cfg.train.log_every == 0 or state.step == total_steps:
                rate = window_queries / (time.perf_counter() - window_start)
                logs = {f"loss/{k}": v.item() for k, v in losses.items()}
                logs |= {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups} | {"queries_per_s": rate}
                postfix = {"loss": f"{logs['loss/total']:.3f}", "contrastive": f"{logs['loss/contrastive']:.3f}"}
                if routing is not None:  # a collapsing pool shows here within the first log steps
                    logs |= {f"routing/{k}": v for k, v in routing.diagnostics(task_names).items() if v is not None}
                    postfix |= {"mi": f"{logs.get('routing/task_mi', 0):.2f}",
                                "top": f"{logs['routing/top_share']:.2f}"}
                accelerator.log(logs, step=state.step)
                if accelerator.is_main_process:
                    append_jsonl(out / "log.jsonl", {"step": state.step, **logs})
                bar.set_postfix(**postfix, qps=f"{rate:.1f}")
                window_start, window_queries = time.perf_counter(), 0
            if dev_collections and (state.step % cfg.train.eval_every == 0 or state.step == total_steps):
                accelerator.unwrap_model(model).calibrate_synthesizer(calibration_queries)
                score = dev_score(accelerator.unwrap_model(model), dev_collections, cfg.train.keep_best_metric,
                                  cfg.train.embedding_cache_dir, windows)
                accelerator.log({f"dev/{cfg.train.keep_best_metric}": score}, step=state.step)
                if accelerator.is_main_process:
                    append_jsonl(out / "log.jsonl", {"step": state.step, f"dev/{cfg.train.keep_best_metric}": score})
                if score > state.best_score:
                    state.best_score, state.best_step = score, state.step
                    if accelerator.is_main_process:
                        swap_folder(accelerator.unwrap_model(model).save_pretrained, out / "best")
                model.train()
            stopping = stop["signal"] or state.step == args.stop_after_steps
            if state.step % cfg.train.save_every == 0 or stopping:
                save_checkpoint(accelerator, out, state.step, *run_state())
            if stopping:
                accelerator.print(f"stopped at step {state.step} ({stop['signal'] or '--stop-after-steps'}); "
                                  f"checkpoint saved, continue with --resume")
                accelerator.end_training()
                if lock is not None:
                    lock.release()
                return 0
            if state.step >= total_steps:
                break

    # ---- export: the final model (AutoModel-loadable), the adapter alone, and the resolved config
    bar.close()
    save_checkpoint(accelerator, out, state.step, *run_state())
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(model)
        final.calibrate_synthesizer(calibration_queries)
        swap_folder(final.save_pretrained, out / "final")
        if final.hyper_prompt is not None:
            swap_folder(final.save_adapter, out / "adapter")
        best = f"; best dev {cfg.train.keep_best_metric} {state.best_score:.4f} at step {state.best_step}"
        accelerator.print(f"done: {state.step} steps, final model in {out / 'final'}"
                          + (best if not math.isinf(state.best_score) else ""))
    accelerator.end_training()
    if lock is not None:
        lock.release()
    return 0


if __name__ == "__main__":
    run_main(main)
