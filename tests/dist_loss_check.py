"""Run under `torchrun --nproc_per_node 2` (gloo): each rank computes the losses on its half of one global batch.

Every rank builds the same global tensors from a fixed seed, takes its slice as leaf tensors, runs the
contrastive loss and CPR, backpropagates, and saves its losses and gradients to <out>/loss-rank<r>.pt;
tests/test_losses.py compares them with the single-process computation over the whole batch.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from hyper_retrieval.training.losses import ContrastivePromptRegularizer, contrastive_loss

B, K, D, N = 3, 2, 8, 4  # queries per rank, hard negatives per query, vector size, pool size


def global_batch(world: int) -> dict[str, torch.Tensor]:
    """The same tensors on every rank: queries (W*B, D), passages (W*B*(1+K), D), attention logits, tasks."""
    g = torch.Generator().manual_seed(0)
    return {
        "queries": torch.randn(world * B, D, generator=g),
        "passages": torch.randn(world * B * (1 + K), D, generator=g),
        "logits": torch.randn(world * B, N, generator=g),
        "tasks": torch.tensor([0, 1, 0, 1, 1, 0][: world * B]),
    }


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    data = global_batch(world)
    q = data["queries"][rank * B:(rank + 1) * B].clone().requires_grad_()
    p = data["passages"][rank * B * (1 + K):(rank + 1) * B * (1 + K)].clone().requires_grad_()
    logits = data["logits"][rank * B:(rank + 1) * B].clone().requires_grad_()
    targets = torch.arange(B) * (1 + K)
    contrastive = contrastive_loss(q, p, targets, temperature=0.5)
    cpr = ContrastivePromptRegularizer(num_tasks=2, num_prompts=N, weight=0.1)
    terms = cpr(logits.softmax(-1), data["tasks"][rank * B:(rank + 1) * B])
    (contrastive + terms["cpr_pull"] + terms["cpr_push"]).backward()
    torch.save({"contrastive": contrastive.detach(), "cpr_pull": terms["cpr_pull"].detach(),
                "cpr_push": terms["cpr_push"].detach(), "q_grad": q.grad, "p_grad": p.grad,
                "logits_grad": logits.grad, "world": world}, out / f"loss-rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
