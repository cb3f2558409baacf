"""What a run leaves in train.output_dir: resumable checkpoints of its whole state, and the final model."""

from __future__ import annotations

import math
from pathlib import Path

from accelerate import Accelerator

from hyper_retrieval.core.atomic_files import swap_folder
from hyper_retrieval.training.checkpoints import resume, save_checkpoint
from hyper_retrieval.training.losses import RetrievalLoss
from hyper_retrieval.training.run_log import truncate_log
from hyper_retrieval.training.run_state import TrainState


class RunCheckpoints:
    """Saves and restores a run: accelerate's state (model, optimizer, RNGs) plus the counters, the schedule and
    the loss's tensors (CPR's memory bank)."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, state: TrainState, scheduler,
                 loss_fn: RetrievalLoss) -> None:
        self.accelerator, self.output_dir = accelerator, output_dir
        self.state, self.scheduler, self.loss_fn = state, scheduler, loss_fn

    def save(self) -> Path:
        saved = {"train": self.state.state_dict(), "scheduler": self.scheduler.state_dict()}
        return save_checkpoint(self.accelerator, self.output_dir, self.state.step, saved, self.loss_fn.state_dict())

    def _restore(self, saved: dict, tensors: dict) -> None:
        self.state.load_state_dict(saved["train"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.loss_fn.load_state_dict({k: v.to(self.accelerator.device) for k, v in tensors.items()})

    def resume(self) -> Path:
        """Continues from the newest checkpoint that loads (the log cut back to its step: no step logged twice);
        exits changing nothing when none does."""
        checkpoint, skipped = resume(self.accelerator, self.output_dir, self._restore)
        if checkpoint is None:
            raise SystemExit(f"train.py --resume: no usable checkpoint in {self.output_dir / 'checkpoints'}; nothing "
                             "was changed.\n" + "\n".join(skipped))
        for line in skipped:
            self.accelerator.print(f"--resume: {line}")
        self.accelerator.print(f"resumed from {checkpoint} at step {self.state.step}")
        if self.accelerator.is_main_process:
            truncate_log(self.output_dir / "log.jsonl", self.state.step)
        return checkpoint


def save_final(accelerator: Accelerator, model, output_dir: Path, calibration_queries: list[str],
               state: TrainState, metric: str) -> None:
    """final/ (save_pretrained, AutoModel-loadable) and adapter/ (the hyper-prompt alone), the synthesizer calibrated
    first; each replaces an earlier copy only once written whole."""
    if not accelerator.is_main_process:
        return
    final = accelerator.unwrap_model(model)
    final.calibrate_synthesizer(calibration_queries)
    swap_folder(final.save_pretrained, output_dir / "final")
    if final.hyper_prompt is not None:
        swap_folder(final.save_adapter, output_dir / "adapter")
    best = f"; best dev {metric} {state.best_score:.4f} at step {state.best_step}"
    accelerator.print(f"done: {state.step} steps, final model in {output_dir / 'final'}"
                      + (best if not math.isinf(state.best_score) else ""))
