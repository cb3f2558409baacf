"""One training step, the same in train.py and bench/train.py: forward, losses, backward, clipping, optimizer step.

Nothing here waits for the device. The loss terms stay device tensors until a log step reads them; a non-finite loss
is recorded on the device (the first step it happened at and its terms) and raised by :meth:`TrainingStep.check`,
which train.py calls at every log step and before anything is saved, so no checkpoint or model is ever written
from weights a non-finite loss reached.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from hyper_retrieval.training.batching import TrainBatch
from hyper_retrieval.training.examples import false_negative_mask
from hyper_retrieval.training.losses import RetrievalLoss
from hyper_retrieval.training.passage_table import PassageTable


class NonFiniteLoss(RuntimeError):
    """A step's loss was NaN or infinite; `step` and `terms` are those of the first such step."""

    def __init__(self, step: int, terms: dict[str, float]) -> None:
        super().__init__(f"non-finite loss at step {step}: {terms}")
        self.step, self.terms = step, terms


@dataclass
class StepOutput:
    """A step's loss terms (detached scalars, on the device) and the queries' prompt attention (B, N) or None."""

    losses: dict[str, torch.Tensor]
    attention: torch.Tensor | None


class TrainingStep:
    """``step(batch, step_number)`` runs one micro-batch under ``accelerator.accumulate`` and returns its
    :class:`StepOutput`; the optimizer steps when the accumulation is complete.

    ``autocast_dtype`` casts the forward passes where the accelerator does not (bench/train.py compares dtypes in one
    process; train.py's accelerator casts from its mixed_precision). ``passage_table`` (on the accelerator) gives the
    vectors of batches that carry passage rows instead of passage tokens.
    """

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 loss_fn: RetrievalLoss, grad_clip: float = 0.0, autocast_dtype: torch.dtype | None = None,
                 passage_table: PassageTable | None = None) -> None:
        self.accelerator, self.model, self.optimizer, self.loss_fn = accelerator, model, optimizer, loss_fn
        self.passage_table = passage_table
        self.grad_clip = grad_clip
        self.autocast_dtype = autocast_dtype
        device = accelerator.device
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms = torch.zeros(len(RetrievalLoss.TERMS), device=device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype in (None, torch.float32):
            return contextlib.nullcontext()
        return torch.autocast(self.accelerator.device.type, dtype=self.autocast_dtype)

    def __call__(self, batch: TrainBatch, step: int) -> StepOutput:
        accelerator, model = self.accelerator, self.model
        with accelerator.accumulate(model):
            with self._autocast():
                q = model(**batch.queries, is_query=True, task_ids=batch.tasks)
                if batch.passage_rows is not None:  # a frozen passage encoder: its vectors, gathered on the device
                    passages = self.passage_table.gather(batch.passage_rows, batch.window_mask)
                else:
                    passages = model(**batch.passages, is_query=False).embeddings
            losses = self.loss_fn(q.embeddings, passages, batch.targets, step=step, attention=q.prompt_attention,
                                  tasks=batch.tasks, exclude=self._false_negatives(batch), logits=q.prompt_logits,
                                  window_mask=batch.window_mask)
            self._record_non_finite(losses, step)
            accelerator.backward(losses["total"])
            if accelerator.sync_gradients and self.grad_clip > 0:
                accelerator.clip_grad_norm_(model.parameters(), self.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return StepOutput({k: v.detach() for k, v in losses.items()}, q.prompt_attention)

    def _false_negatives(self, batch: TrainBatch) -> torch.Tensor:
        """(B, all processes' passages) the other gold passages of each query, compared as key ids on the device."""
        accelerator = self.accelerator
        passage_ids = accelerator.gather(batch.passage_ids) if accelerator.num_processes > 1 else batch.passage_ids
        offset = accelerator.process_index * len(batch.passage_ids)
        return false_negative_mask(batch.positive_ids, passage_ids, batch.targets + offset)

    @torch.no_grad()
    def _record_non_finite(self, losses: dict[str, torch.Tensor], step: int) -> None:
        first = (~torch.isfinite(losses["total"])) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(first, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        terms = torch.stack([losses[name].detach().float() for name in RetrievalLoss.TERMS])
        self.bad_terms = torch.where(first, terms, self.bad_terms)

    def check(self) -> None:
        """Raises NonFiniteLoss if any step so far had a non-finite loss (one read from the device)."""
        steps = self.first_bad_step[None]
        if self.accelerator.num_processes > 1:  # every process stops together, at the earliest bad step of any
            steps = self.accelerator.gather(steps)
        bad = [s for s in steps.tolist() if s >= 0]
        if bad:
            mine = int(self.first_bad_step) >= 0  # the terms are those of this process's queries
            terms = dict(zip(RetrievalLoss.TERMS, self.bad_terms.tolist(), strict=True)) if mine else {}
            raise NonFiniteLoss(min(bad), terms)
