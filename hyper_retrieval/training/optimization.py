"""The optimizer and schedule: AdamW with the backbone and prompt learning rates, linear warm-up and decay."""

from __future__ import annotations

import torch
from transformers import get_linear_schedule_with_warmup

from hyper_retrieval.training.config import OptimSettings


def build_optimizer(model, settings: OptimSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW over model.parameter_groups (backbone and prompt learning rates really differ); fused on CUDA (one
    kernel for every parameter, and its step counters stay on the device)."""
    groups = model.parameter_groups(settings.backbone_lr, settings.prompt_lr, settings.weight_decay)
    return torch.optim.AdamW(groups, fused=device.type == "cuda" or None)


def total_steps(settings: OptimSettings, batches_per_epoch: int) -> int:
    """Optimizer steps of the run: optim.max_steps, else optim.epochs of `batches_per_epoch` micro-batches."""
    return settings.max_steps or settings.epochs * batches_per_epoch // settings.grad_accum


def build_schedule(optimizer: torch.optim.Optimizer, settings: OptimSettings, steps: int):
    """Linear warm-up (optim.warmup_steps, or warmup_ratio of the run) then linear decay to 0 at `steps`."""
    return get_linear_schedule_with_warmup(optimizer, settings.warmup_for(steps), steps)
