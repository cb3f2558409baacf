"""Starting a run: the accelerator (precision, matmul settings) and the output folder, claimed by one writer."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from hyper_retrieval.core.folder_lock import FolderBusyError, FolderLock, lock_folder
from hyper_retrieval.core.precision import resolve_mixed_precision
from hyper_retrieval.core.run_folders import RunFolderError, moved_aside_name, training_output_plan
from hyper_retrieval.core.strict_yaml import dump_yaml
from hyper_retrieval.training.checkpoints import list_checkpoints
from hyper_retrieval.training.config import TrainConfig
from hyper_retrieval.training.malloc_settings import keep_freed_memory
from hyper_retrieval.training.run_log import truncate_log


def start_accelerator(cfg: TrainConfig) -> Accelerator:
    """The run's Accelerator: mixed precision from the config (or the launcher), gradient accumulation, tensorboard
    in train.output_dir. On CUDA float32 matmuls use TF32 when optim.tf32 (the default); on the CPU freed
    activations stay mapped between steps (+10-40%, bench/train.py)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(cfg.optim.mixed_precision, device),
                              gradient_accumulation_steps=cfg.optim.grad_accum, log_with="tensorboard",
                              project_dir=cfg.train.output_dir)
    source = ("the launcher" if cfg.optim.mixed_precision is None
              else f"the config: {cfg.optim.mixed_precision}")
    accelerator.print(f"{accelerator.num_processes} process(es) on {accelerator.device.type}, mixed precision "
                      f"{accelerator.mixed_precision} (from {source})")
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = cfg.optim.tf32
    else:
        keep_freed_memory()
    return accelerator


def claim_output_folder(accelerator: Accelerator, cfg: TrainConfig, resume: bool, move_aside: bool
                        ) -> FolderLock | None:
    """Locks train.output_dir for the whole run (main process) and prepares it as training_output_plan decides:
    never inside another run, a checkpoint, a model, an export or an evaluation, never over an input; a fresh start
    needs no other run's traces there (or --move-aside); --resume needs a checkpoint. Every process follows the
    main one's plan, or exits with its message. Returns the lock (None on the other processes)."""
    out = Path(cfg.train.output_dir)
    lock, plan = None, None
    if accelerator.is_main_process:
        try:
            lock = lock_folder(out, check=lambda: training_output_plan(
                out, resume=resume, move_aside=move_aside, config=dump_yaml(cfg.to_dict()),
                inputs={"model.backbone": [cfg.model.backbone],
                        "data.collections": [c.path for c in cfg.data.collections]}))
            plan = lock.checked
        except (FolderBusyError, RunFolderError) as e:
            plan = f"train.py: {e}"
    if accelerator.num_processes > 1:
        plan = broadcast_object_list([plan])[0]
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
    if resume and not list_checkpoints(out):
        sys.exit(f"train.py --resume: no checkpoint in {out / 'checkpoints'} to continue from (start without --resume: "
                 "a run stopped before its first checkpoint starts over from step 0)")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    return lock
