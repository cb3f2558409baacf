"""The optimizer and schedule: AdamW with the backbone and prompt learning rates, linear warm-up and decay."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from hyper_retrieval.training.config import OptimSettings


def fused_adamw(setting: bool | None, device: torch.device, mixed_precision: str | None) -> bool:
    """optim.fused_adamw made concrete. None: fused on CUDA (one kernel for every parameter, its step counters on the
    device) and on a CPU under bf16/fp16 autocast, where AdamW's per-parameter loop is over a third of a step
    (bench/profile_step.py) and the fused kernel makes train.py's step 1.2x faster (bench/train_run.py). A float32 CPU
    run keeps the per-parameter form: the fused kernel rounds differently, and earlier float32 CPU runs reproduce bit
    for bit only under the same one."""
    if setting is not None:
        return setting
    return device.type == "cuda" or (device.type == "cpu" and mixed_precision in ("bf16", "fp16"))


def build_optimizer(model, settings: OptimSettings, device: torch.device,
                    mixed_precision: str | None = None) -> torch.optim.AdamW:
    """AdamW over model.parameter_groups (backbone and prompt learning rates really differ), fused where
    :func:`fused_adamw` says (`mixed_precision`: the accelerator's, after the launcher and optim.mixed_precision)."""
    groups = model.parameter_groups(settings.backbone_lr, settings.prompt_lr, settings.weight_decay)
    fused = fused_adamw(settings.fused_adamw, device, mixed_precision)
    return torch.optim.AdamW(groups, fused=True if fused else None)


def total_steps(settings: OptimSettings, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: optim.max_steps, else optim.epochs of `batches_per_epoch` micro-batches."""
    return settings.max_steps or settings.epochs * batches_per_epoch // settings.grad_accum


def build_schedule(optimizer: torch.optim.Optimizer, settings: OptimSettings, steps: int):
    """Linear warm-up (optim.warmup_steps, or warmup_ratio of the run) then linear decay to 0 at `steps`."""
    return get_linear_schedule_with_warmup(optimizer, settings.warmup_for(steps), steps)
