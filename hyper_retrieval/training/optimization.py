"""The optimizer and schedule: AdamW with the backbone and prompt learning rates, linear warm-up and decay."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from hyper_retrieval.training.config import OptimSettings


def build_optimizer(model, settings: OptimSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW over model.parameter_groups (backbone and prompt learning rates really differ). Fused on CUDA: one kernel
    for every parameter, its step counters on the device. Elsewhere torch's default form: the CPU's fused kernel
    rounds differently, so earlier CPU runs would no longer reproduce (bench/profile_step.py: AdamW is a fifth of a
    CPU step)."""
    groups = model.parameter_groups(settings.backbone_lr, settings.prompt_lr, settings.weight_decay)
    return torch.optim.AdamW(groups, fused=True if device.type == "cuda" else None)


def total_steps(settings: OptimSettings, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: optim.max_steps, else optim.epochs of `batches_per_epoch` micro-batches."""
    return settings.max_steps or settings.epochs * batches_per_epoch // settings.grad_accum


def build_schedule(optimizer: torch.optim.Optimizer, settings: OptimSettings, steps: int):
    """Linear warm-up (optim.warmup_steps, or warmup_ratio of the run) then linear decay to 0 at `steps`."""
    return get_linear_schedule_with_warmup(optimizer, settings.warmup_for(steps), steps)
