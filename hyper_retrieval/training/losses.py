"""Training losses, each term returned separately so train.py logs every one.

- Contrastive: softmax cross-entropy of each query against its gold passage, its hard negatives and every
  other passage of the global batch (gathered across processes WITH gradient). Dense or sparse (vocab-sized)
  vectors alike: scores are dot products divided by a temperature.
- CPR (contrastive prompt regularization) on the prompt attention distributions p_i (B, N), as released:
  same task pairs add pull_weight * JS(p_i, p_j), different task pairs add push_weight * (1 - JS(p_i, p_j)),
  JS in nats. JS is bounded by ln 2 ~ 0.693, so a push term never goes below push_weight * (1 - ln 2); the
  constant does not change the gradient (we keep the release's form so weights mean the same). The sum runs over
  ordered pairs (i, j), i != j, i in this process's batch and j in the global batch (each unordered pair of the
  global batch is counted twice, once from each side), plus the pairs of i with the memory bank's entries; it
  is divided by the local batch size and weighted by lambda_c. The memory bank keeps recent detached attention
  vectors per task, so CPR has cross-task pairs under task-homogeneous batches too (the release's bank was
  never initialised).
- FLOPS (SPLADE): sum_j (mean_i |w_ij|)^2 over the query vectors, weight warmed up linearly.
- Router terms on the synthesizer's logits z (B, N) and attention a (B, N), off unless weighted (this process's
  queries): ST-MoE's z-loss mean_i (logsumexp_j z_ij)^2; Switch's balance N sum_j f_j P_j (f_j the share of queries
  whose top prompt is j, P_j the mean attention on j; 1 when balanced); and minus the mutual information between
  task and prompt under the soft assignment, sum_t pi_t KL(mean a | t || mean a) (Mod-Squad).

Under several processes every rank returns the loss of its own queries (mean over them); with DDP's gradient
averaging the update equals the single-process loss over the global batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
import torch.nn.functional as F
from torch import Tensor, nn

from hyper_retrieval.training.config import LossSettings

_EPS = 1e-12


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(x: Tensor) -> Tensor:
    """(n, ...) -> (world_size * n, ...) in rank order; the gradient reaches every rank's own slice.

    Every rank must pass the same shape. Without torch.distributed (or with one process) returns x.
    """
    if not _distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def gather_no_grad(x: Tensor) -> Tensor:
    """(n, ...) -> (world_size * n, ...) in rank order, no gradient (for labels)."""
    if not _distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def contrastive_loss(queries: Tensor, passages: Tensor, targets: Tensor, temperature: float = 1.0,
                     exclude: Tensor | None = None, window_mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy over this rank's queries against all passages of the global batch.

    queries (B, d); passages (M, d) this rank's passages (e.g. B * (1 + k): each query's gold then its k hard
    negatives), or (M, W, d) with window_mask (M, W) True for real windows: a passage then scores its best window
    (MaxP); targets (B,) index of each query's gold in `passages`; exclude (B, world_size * M) bool, True
    for passages to leave out of a query's softmax (other gold passages of the same query). Returns a scalar.
    """
    all_passages = gather_with_grad(passages)  # (world_size * M, d) or (world_size * M, W, d)
    if window_mask is None:
        scores = (queries @ all_passages.T).float() / temperature  # (B, world_size * M)
    else:
        window_scores = torch.einsum("bd,mwd->bmw", queries, all_passages).float()
        window_scores = window_scores.masked_fill(~gather_no_grad(window_mask)[None], float("-inf"))
        scores = window_scores.amax(dim=-1) / temperature
    if exclude is not None:
        scores = scores.masked_fill(exclude, torch.finfo(scores.dtype).min)
    return F.cross_entropy(scores, targets + _rank() * passages.shape[0])


# Devices where CPR compacts what it selects (the memory bank's filled slots, the pairs a term sums), as it always has,
# so CPU runs reproduce earlier ones bit for bit. Elsewhere the count of selected values would have to be read back
# from the device (a stall every step), so CPR keeps every slot and sums under torch.where: the same values, added
# (forward and backward) in another order.
COMPACTING_DEVICES = ("cpu",)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    """The sum of `values` where `mask` (same shape), a scalar; never waits for the device (COMPACTING_DEVICES)."""
    if values.device.type in COMPACTING_DEVICES:
        return values[mask].sum()
    return torch.where(mask, values, 0).sum()


def pairwise_js_divergence(p: Tensor, q: Tensor) -> Tensor:
    """Pairwise Jensen-Shannon divergence in nats: p (B, N), q (M, N) distributions -> (B, M), in [0, ln 2]."""
    p, q = p.unsqueeze(1), q.unsqueeze(0)  # (B, 1, N), (1, M, N)
    log_m = (0.5 * (p + q)).clamp_min(_EPS).log()
    kl_pm = (p * (p.clamp_min(_EPS).log() - log_m)).sum(-1)
    kl_qm = (q * (q.clamp_min(_EPS).log() - log_m)).sum(-1)
    return 0.5 * (kl_pm + kl_qm)


class AttentionMemoryBank(nn.Module):
    """FIFO of the last `size` detached attention vectors (N,) per task; buffers, so it is checkpointed."""

    def __init__(self, num_tasks: int, size: int, num_prompts: int) -> None:
        super().__init__()
        self.size = size
        self.register_buffer("entries", torch.zeros(num_tasks, size, num_prompts))  # (T, S, N)
        self.register_buffer("filled", torch.zeros(num_tasks, dtype=torch.long))  # (T,) valid entries per task
        self.register_buffer("cursor", torch.zeros(num_tasks, dtype=torch.long))  # (T,) next slot to write

    @torch.no_grad()
    def push(self, attention: Tensor, tasks: Tensor) -> None:
        """Store attention (n, N) rows under their task ids (n,), oldest entries overwritten first: of a task's rows
        in this call only its last `size` are kept. Tensor work only (no read-back of the task ids)."""
        num_tasks = len(self.filled)
        one_hot = F.one_hot(tasks, num_tasks)  # (n, T)
        rank = (one_hot.cumsum(0) * one_hot).sum(1) - 1  # (n,) position of each row among its task's rows
        count = one_hot.sum(0)  # (T,) rows per task
        kept = count.clamp(max=self.size)
        dropped = count[tasks] - kept[tasks]  # (n,) the first rows of an overfull task are dropped
        slot = (self.cursor[tasks] + rank - dropped) % self.size
        slot = torch.where(rank >= dropped, slot, self.size)  # dropped rows go to a scratch column
        scratch = torch.cat([self.entries, self.entries.new_zeros(num_tasks, 1, self.entries.shape[2])], dim=1)
        scratch[tasks, slot] = attention.detach().to(self.entries.dtype)
        self.entries.copy_(scratch[:, : self.size])
        self.cursor.copy_((self.cursor + kept) % self.size)
        self.filled.copy_((self.filled + kept).clamp(max=self.size))

    def contents(self) -> tuple[Tensor, Tensor, Tensor]:
        """Entries (M, N), their task ids (M,) and whether each holds an entry (M,) bool: on COMPACTING_DEVICES the
        filled slots only (all True), elsewhere every slot, M = T * S (no count read back from the device)."""
        valid = torch.arange(self.size, device=self.filled.device)[None, :] < self.filled[:, None]  # (T, S)
        tasks = torch.arange(len(self.filled), device=self.filled.device)[:, None].expand_as(valid)
        if self.entries.device.type in COMPACTING_DEVICES:
            return self.entries[valid], tasks[valid], valid[valid]
        return self.entries.flatten(0, 1), tasks.flatten(), valid.flatten()


class ContrastivePromptRegularizer(nn.Module):
    """CPR over prompt attention (B, N) with task ids (B,); returns {"cpr_pull", "cpr_push"} (weighted scalars).

    In training mode the global batch's attention is pushed into the memory bank after the loss is computed.
    """

    def __init__(self, num_tasks: int, num_prompts: int, weight: float = 0.1, pull_weight: float = 1.0,
                 push_weight: float = 0.5, pull: bool = True, push: bool = True, bank_size: int = 0) -> None:
        super().__init__()
        self.weight, self.pull_weight, self.push_weight = weight, pull_weight, push_weight
        self.pull, self.push = pull, push
        self.bank = AttentionMemoryBank(num_tasks, bank_size, num_prompts) if bank_size > 0 else None

    def forward(self, attention: Tensor, tasks: Tensor) -> dict[str, Tensor]:
        batch = attention.shape[0]
        global_attention = gather_with_grad(attention)  # (G, N)
        global_tasks = gather_no_grad(tasks)  # (G,)
        own = torch.arange(batch, device=attention.device) + _rank() * batch
        not_self = torch.ones(batch, len(global_tasks), dtype=torch.bool, device=attention.device)
        not_self[torch.arange(batch), own] = False
        others, other_tasks, valid = global_attention, global_tasks, not_self
        if self.bank is not None:
            bank_attention, bank_tasks, bank_valid = self.bank.contents()
            others = torch.cat([others, bank_attention.to(attention.dtype)])
            other_tasks = torch.cat([other_tasks, bank_tasks.to(tasks.device)])
            valid = torch.cat([valid, bank_valid[None, :].expand(batch, -1)], dim=1)
        js = pairwise_js_divergence(attention, others)  # (B, G + T * S)
        same = tasks[:, None] == other_tasks[None, :]
        scale = self.weight / batch
        zero = attention.new_zeros(())
        terms = {
            "cpr_pull": scale * self.pull_weight * masked_sum(js, same & valid) if self.pull else zero,
            "cpr_push": scale * self.push_weight * masked_sum(1 - js, ~same & valid) if self.push else zero,
        }
        if self.bank is not None and self.training:
            self.bank.push(global_attention.detach(), global_tasks)
        return terms


def flops_regularizer(representations: Tensor) -> Tensor:
    """SPLADE's FLOPS: sum_j (mean_i |w_ij|)^2 for vectors (B, V); a scalar."""
    return representations.abs().mean(dim=0).pow(2).sum()


def router_z_loss(logits: Tensor) -> Tensor:
    """ST-MoE's z-loss: mean over queries of logsumexp(logits (B, N))^2; keeps the logits from growing unbounded."""
    return torch.logsumexp(logits.float(), dim=-1).pow(2).mean()


def router_balance_loss(attention: Tensor) -> Tensor:
    """Switch's load balance N * sum_j f_j P_j for attention (B, N): 1 when the top choices and mass are uniform."""
    num_prompts = attention.shape[-1]
    top_share = F.one_hot(attention.argmax(-1), num_prompts).to(attention.dtype).mean(0)
    return num_prompts * (top_share.detach() * attention.mean(0)).sum()


def task_prompt_information(attention: Tensor, tasks: Tensor, num_tasks: int) -> Tensor:
    """I(task; prompt) in nats with prompt ~ attention (B, N) of a query of task tasks (B,): sum_t pi_t KL(p_t || p)."""
    overall = attention.mean(0).clamp_min(_EPS)
    one_hot = F.one_hot(tasks, num_tasks).to(attention.dtype)  # (B, T)
    counts = one_hot.sum(0)  # (T,) queries per task; tasks without queries weigh 0
    p_t = (one_hot.T @ attention / counts.clamp_min(1)[:, None]).clamp_min(_EPS)  # (T, N)
    return (counts / len(attention) * (p_t * (p_t.log() - overall.log())).sum(-1)).sum()


def warmup_weight(weight: float, step: int, warmup_steps: int) -> float:
    """weight * min(1, step / warmup_steps): linear from 0 at step 0 to `weight` at warmup_steps."""
    return weight if warmup_steps <= 0 else weight * min(1.0, step / warmup_steps)


class RetrievalLoss(nn.Module):
    """All terms from LossSettings: {"contrastive", "cpr_pull", "cpr_push", "flops", "router_z", "router_balance",
    "router_mi", "total"} (scalars, weighted).

    cpr_* and router_* are zero without attention (no prompt pool) or at weight 0; flops is zero for dense vectors.
    """

    TERMS = ("contrastive", "cpr_pull", "cpr_push", "flops", "router_z", "router_balance", "router_mi", "total")

    def __init__(self, settings: LossSettings, num_tasks: int, num_prompts: int, sparse: bool) -> None:
        super().__init__()
        self.settings = settings
        self.sparse = sparse
        self.num_tasks = num_tasks
        self.cpr = ContrastivePromptRegularizer(
            num_tasks, num_prompts, settings.cpr_weight, settings.cpr_pull_weight, settings.cpr_push_weight,
            settings.cpr_pull, settings.cpr_push, settings.memory_bank_size,
        )

    def forward(self, queries: Tensor, passages: Tensor, targets: Tensor, step: int,
                attention: Tensor | None = None, tasks: Tensor | None = None,
                exclude: Tensor | None = None, logits: Tensor | None = None,
                window_mask: Tensor | None = None) -> dict[str, Tensor]:
        """queries (B, d), passages (M, d) (or (M, W, d) windows with window_mask (M, W)), targets (B,), attention
        (B, N), its logits (B, N) and tasks (B,) for CPR and the router terms, step for FLOPS."""
        zero = queries.new_zeros((), dtype=torch.float32)
        temperature = self.settings.contrastive_temperature
        terms = {"contrastive": contrastive_loss(queries, passages, targets, temperature, exclude, window_mask)}
        if attention is not None and tasks is not None and self.settings.cpr_weight > 0:
            terms.update(self.cpr(attention, tasks))
        else:
            terms.update(cpr_pull=zero, cpr_push=zero)
        flops_weight = warmup_weight(self.settings.flops_weight, step, self.settings.flops_warmup_steps)
        terms["flops"] = flops_weight * flops_regularizer(queries) if self.sparse else zero
        s = self.settings
        routed = attention is not None and logits is not None
        terms["router_z"] = s.router_z_weight * router_z_loss(logits) if routed and s.router_z_weight else zero
        terms["router_balance"] = (s.router_balance_weight * router_balance_loss(attention)
                                   if routed and s.router_balance_weight else zero)
        terms["router_mi"] = (-s.router_mi_weight * task_prompt_information(attention, tasks, self.num_tasks)
                              if routed and tasks is not None and s.router_mi_weight else zero)
        terms["total"] = sum(terms.values())
        return terms
