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
import contextlib
import signal
import sys
from pathlib import Path

from accelerate.utils import set_seed

from hyper_retrieval.cli.options import POSITIVE, run_main
from hyper_retrieval.core.strict_yaml import dump_yaml
from hyper_retrieval.training.checkpoints import latest_checkpoint
from hyper_retrieval.training.config import ConfigError, load_config
from hyper_retrieval.training.dev_scoring import CALIBRATION_QUERIES, DevSelection, sample_queries
from hyper_retrieval.training.launch import claim_output_folder, start_accelerator
from hyper_retrieval.training.losses import RetrievalLoss
from hyper_retrieval.training.models import build_model, passage_windows, prompt_count
from hyper_retrieval.training.optimization import build_optimizer, build_schedule, total_steps
from hyper_retrieval.training.prefetch import prefetched
from hyper_retrieval.training.run_log import TrainingLog
from hyper_retrieval.training.run_outputs import RunCheckpoints, save_final
from hyper_retrieval.training.run_state import TrainState
from hyper_retrieval.training.step import NonFiniteLoss, TrainingStep
from hyper_retrieval.training.training_data import batch_builder, batch_sampler, load_training_data


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
    accelerator = start_accelerator(cfg)
    set_seed(cfg.train.seed)
    lock = claim_output_folder(accelerator, cfg, resume=args.resume, move_aside=args.move_aside)

    # ---- the model first (it may mine the hard negatives), then the data, the optimizer and the loss
    model = build_model(cfg.model, cfg.data.task_names)
    windows = passage_windows(cfg.model)  # how passages are read: in training (passage table), dev and test alike
    if cfg.optim.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    data = load_training_data(cfg, model, accelerator, windows)
    optimizer = build_optimizer(model, cfg.optim, accelerator.device, accelerator.mixed_precision)
    sampler = batch_sampler(cfg, data, accelerator.num_processes, accelerator.process_index)
    steps = total_steps(cfg.optim, sampler.num_batches)
    scheduler = build_schedule(optimizer, cfg.optim, steps)
    num_prompts = prompt_count(model)
    loss_fn = RetrievalLoss(cfg.loss, len(data.tasks), num_prompts, sparse=cfg.model.representation == "sparse")
    builder = batch_builder(cfg, data, model.tokenizer)
    model, optimizer = accelerator.prepare(model, optimizer)
    train_step = TrainingStep(accelerator, model, optimizer, loss_fn.to(accelerator.device), cfg.optim.grad_clip,
                              passage_table=data.passage_table)
    state = TrainState()
    checkpoints = RunCheckpoints(accelerator, out, state, scheduler, loss_fn)
    if args.resume:
        checkpoints.resume()
    if accelerator.is_main_process:
        (out / "train_config.yaml").write_text(dump_yaml(cfg.to_dict()))
        accelerator.init_trackers("hyper", config={k: str(v) for k, v in cfg.to_dict().items()})
    # The synthesizer's running statistics are set exactly from these before each evaluation and the final save.
    calibration_queries = sample_queries(data.tasks, CALIBRATION_QUERIES, cfg.train.seed)
    select = DevSelection(data.dev_collections, cfg.train.keep_best_metric, cfg.train.embedding_cache_dir, windows,
                          calibration_queries, out)
    log = TrainingLog(accelerator, out, cfg.data.task_names, num_prompts, steps, state.step)
    stop = {"signal": None}
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.update(signal=signal.Signals(signum).name))

    # ---- the loop: one optimizer step = grad_accum micro-batches; the sampler position follows state.micro_step.
    # Batches are built a few ahead in a thread; the device's results are read back only at log, dev and save steps.
    model.train()
    try:
        while state.step < steps:
            epoch, position = divmod(state.micro_step, sampler.num_batches)
            sampler.set_epoch(epoch)
            sampler.skip(position)
            micro_batches = (builder(indices, micro, accelerator.process_index)
                             for micro, indices in enumerate(sampler, start=state.micro_step))
            with contextlib.closing(prefetched(micro_batches, pin_memory=accelerator.device.type == "cuda")) as batches:
                for batch in batches:
                    output = train_step(batch.to(accelerator.device, non_blocking=True), state.step)
                    state.micro_step += 1
                    log.add(output.attention, batch.tasks)
                    if not accelerator.sync_gradients:
                        continue
                    scheduler.step()
                    state.step += 1
                    log.bar.update(1)
                    if state.step % cfg.train.log_every == 0 or state.step == steps:
                        train_step.check()
                        log.write(state.step, output.losses, optimizer)
                    if data.dev_collections and (state.step % cfg.train.eval_every == 0 or state.step == steps):
                        train_step.check()
                        score = select(accelerator.unwrap_model(model), state, accelerator.is_main_process)
                        log.record(state.step, {f"dev/{cfg.train.keep_best_metric}": score})
                        model.train()
                    stopping = stop["signal"] or state.step == args.stop_after_steps
                    if state.step % cfg.train.save_every == 0 or stopping:
                        train_step.check()
                        checkpoints.save()
                    if stopping:
                        accelerator.print(f"stopped at step {state.step} ({stop['signal'] or '--stop-after-steps'}); "
                                          "checkpoint saved, continue with --resume")
                        accelerator.end_training()
                        if lock is not None:
                            lock.release()
                        return 0
                    if state.step >= steps:
                        break
        train_step.check()
    except NonFiniteLoss as e:
        sys.exit(f"{e}. Stopped; the last good checkpoint is {latest_checkpoint(out)} (resume with --resume, perhaps "
                 "with a lower learning rate or fp32)")

    # ---- the end: a last checkpoint, the final model (AutoModel-loadable) and the adapter alone
    log.bar.close()
    checkpoints.save()
    save_final(accelerator, model, out, calibration_queries, state, cfg.train.keep_best_metric)
    accelerator.end_training()
    if lock is not None:
        lock.release()
    return 0


if __name__ == "__main__":
    run_main(main)
