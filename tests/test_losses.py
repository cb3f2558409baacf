"""Losses against hand computations; CPR's pull/push behaviour and memory bank; gathering across 2 processes."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from dist_loss_check import B, K, global_batch
from processes import REPO, torchrun_two
from scipy.spatial.distance import jensenshannon

from hyper_retrieval.training.config import LossSettings
from hyper_retrieval.training.losses import (
    AttentionMemoryBank,
    ContrastivePromptRegularizer,
    RetrievalLoss,
    contrastive_loss,
    flops_regularizer,
    pairwise_js_divergence,
    warmup_weight,
)


def hand_contrastive(q: list[list[float]], p: list[list[float]], targets: list[int], temperature: float,
                     exclude: set[tuple[int, int]] = frozenset()) -> float:
    """Mean over queries of -log softmax(q.p / T)[target], with plain Python loops."""
    losses = []
    for i, qi in enumerate(q):
        scores = {j: sum(a * b for a, b in zip(qi, pj, strict=True)) / temperature for j, pj in enumerate(p)
                  if (i, j) not in exclude}
        log_z = math.log(sum(math.exp(s) for s in scores.values()))
        losses.append(log_z - scores[targets[i]])
    return sum(losses) / len(losses)


def test_contrastive_matches_hand_computation_with_in_batch_negatives() -> None:
    torch.manual_seed(0)
    q, p = torch.randn(3, 5), torch.randn(6, 5)  # each query: gold then one hard negative
    targets = torch.tensor([0, 2, 4])
    loss = contrastive_loss(q, p, targets, temperature=0.2)
    assert loss.item() == pytest.approx(hand_contrastive(q.tolist(), p.tolist(), [0, 2, 4], 0.2), rel=1e-5)
    # the other queries' passages are negatives too: query 0 alone still pulls gradient from passages 2..5
    p.requires_grad_()
    contrastive_loss(q[:1], p, targets[:1], temperature=0.2).backward()
    assert (p.grad[2:].abs().sum(dim=1) > 0).all()
    # excluded passages (another gold of the same query) leave the softmax
    exclude = torch.zeros(3, 6, dtype=torch.bool)
    exclude[0, 4] = exclude[2, 1] = True
    masked = contrastive_loss(q, p, targets, temperature=0.2, exclude=exclude)
    hand = hand_contrastive(q.tolist(), p.tolist(), [0, 2, 4], 0.2, exclude={(0, 4), (2, 1)})
    assert masked.item() == pytest.approx(hand, rel=1e-5)


def test_contrastive_on_sparse_vocab_sized_vectors() -> None:
    torch.manual_seed(1)
    vocab = 30522
    dense = torch.zeros(2 + 4, vocab)
    for row in dense:  # ~40 active terms per vector, like a SPLADE vector
        row[torch.randint(0, vocab, (40,))] = torch.rand(40) * 3
    q, p = dense[:2], dense[2:]
    sparse = [{j: v for j, v in enumerate(row.tolist()) if v} for row in dense]
    dots = [[sum(v * sparse[2 + k].get(j, 0.0) for j, v in sparse[i].items()) for k in range(4)] for i in range(2)]
    hand = sum(math.log(sum(math.exp(s) for s in row)) - row[t] for row, t in zip(dots, [0, 2], strict=True)) / 2
    assert contrastive_loss(q, p, torch.tensor([0, 2])).item() == pytest.approx(hand, rel=1e-5)


def test_js_divergence_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    p, q = rng.dirichlet(np.ones(5), size=4), rng.dirichlet(np.ones(5), size=3)
    js = pairwise_js_divergence(torch.tensor(p), torch.tensor(q)).numpy()
    expected = np.array([[jensenshannon(a, b) ** 2 for b in q] for a in p])  # scipy: sqrt(JS), natural log
    np.testing.assert_allclose(js, expected, rtol=1e-6, atol=1e-12)
    disjoint = pairwise_js_divergence(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))
    assert disjoint.item() == pytest.approx(math.log(2), rel=1e-6)


def test_cpr_terms_match_direct_computation() -> None:
    rng = np.random.default_rng(1)
    attn = rng.dirichlet(np.ones(5), size=4)
    tasks = [0, 0, 1, 1]
    cpr = ContrastivePromptRegularizer(num_tasks=2, num_prompts=5, weight=0.1, pull_weight=1.0, push_weight=0.5)
    terms = cpr(torch.tensor(attn), torch.tensor(tasks))
    pull = sum(jensenshannon(attn[i], attn[j]) ** 2 for i in range(4) for j in range(4)
               if i != j and tasks[i] == tasks[j])
    push = sum(1 - jensenshannon(attn[i], attn[j]) ** 2 for i in range(4) for j in range(4) if tasks[i] != tasks[j])
    assert terms["cpr_pull"].item() == pytest.approx(0.1 / 4 * 1.0 * pull, rel=1e-6)
    assert terms["cpr_push"].item() == pytest.approx(0.1 / 4 * 0.5 * push, rel=1e-6)
    no_pull = ContrastivePromptRegularizer(2, 5, pull=False)(torch.tensor(attn), torch.tensor(tasks))
    no_push = ContrastivePromptRegularizer(2, 5, push=False)(torch.tensor(attn), torch.tensor(tasks))
    assert no_pull["cpr_pull"].item() == 0 and no_pull["cpr_push"].item() > 0
    assert no_push["cpr_push"].item() == 0 and no_push["cpr_pull"].item() > 0


def mean_js(attn: torch.Tensor, tasks: torch.Tensor, same: bool) -> float:
    js = pairwise_js_divergence(attn, attn)
    pairs = (tasks[:, None] == tasks[None, :]) if same else (tasks[:, None] != tasks[None, :])
    pairs &= ~torch.eye(len(tasks), dtype=torch.bool)
    return js[pairs].mean().item()


@pytest.mark.parametrize("pull", [True, False])
def test_pull_only_lowers_same_task_and_push_only_raises_cross_task_divergence(pull: bool) -> None:
    torch.manual_seed(2)
    logits = torch.randn(8, 5, requires_grad=True)
    tasks = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    cpr = ContrastivePromptRegularizer(num_tasks=2, num_prompts=5, weight=1.0, pull=pull, push=not pull)
    before = mean_js(logits.softmax(-1).detach(), tasks, same=pull)
    optimizer = torch.optim.SGD([logits], lr=2.0)
    for _ in range(30):
        optimizer.zero_grad()
        sum(cpr(logits.softmax(-1), tasks).values()).backward()
        optimizer.step()
    after = mean_js(logits.softmax(-1).detach(), tasks, same=pull)
    if pull:
        assert after < 0.2 * before
    else:
        assert after > before + 0.1 and after <= math.log(2)


def test_memory_bank_gives_cross_task_pairs_to_single_task_batches() -> None:
    rng = np.random.default_rng(3)
    batch_b, batch_a = rng.dirichlet(np.ones(4), size=3), rng.dirichlet(np.ones(4), size=3)
    without_bank = ContrastivePromptRegularizer(num_tasks=2, num_prompts=4)
    assert without_bank(torch.tensor(batch_a), torch.tensor([0, 0, 0]))["cpr_push"].item() == 0
    cpr = ContrastivePromptRegularizer(num_tasks=2, num_prompts=4, weight=0.1, bank_size=8)
    cpr(torch.tensor(batch_b), torch.tensor([1, 1, 1]))  # a step on task 1 fills the bank
    terms = cpr(torch.tensor(batch_a), torch.tensor([0, 0, 0]))  # then a task-0-only batch
    push = sum(1 - jensenshannon(a, b) ** 2 for a in batch_a for b in batch_b)
    pull = sum(jensenshannon(batch_a[i], batch_a[j]) ** 2 for i in range(3) for j in range(3) if i != j)
    assert terms["cpr_push"].item() == pytest.approx(0.1 / 3 * 0.5 * push, rel=1e-5) and push > 0
    assert terms["cpr_pull"].item() == pytest.approx(0.1 / 3 * 1.0 * pull, rel=1e-5)  # bank had no task 0 yet
    assert cpr.bank.filled.tolist() == [3, 3]


def test_memory_bank_is_fifo_per_task_and_checkpointable() -> None:
    bank = AttentionMemoryBank(num_tasks=2, size=4, num_prompts=2)
    rows = torch.tensor([[i, 1.0] for i in range(6)])
    bank.push(rows[:3], torch.tensor([0, 0, 0]))
    bank.push(rows[3:], torch.tensor([0, 0, 1]))  # task 0 now holds 5 rows: the oldest one is gone
    entries, tasks, valid = bank.contents()
    assert sorted(entries[(tasks == 0) & valid, 0].tolist()) == [1, 2, 3, 4]
    assert entries[(tasks == 1) & valid, 0].tolist() == [5]
    restored = AttentionMemoryBank(num_tasks=2, size=4, num_prompts=2)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.contents()[0], entries)


def test_memory_bank_keeps_each_tasks_newest_rows_like_a_fifo() -> None:
    """Random pushes, some with more rows of a task than the bank holds, against per-task Python FIFOs."""
    rng = np.random.default_rng(0)
    size, num_tasks = 5, 3
    bank = AttentionMemoryBank(num_tasks=num_tasks, size=size, num_prompts=1)
    fifo = {t: [] for t in range(num_tasks)}
    value = 0
    for _ in range(40):
        tasks = rng.integers(num_tasks, size=int(rng.integers(1, 12)))
        rows = torch.arange(value, value + len(tasks), dtype=torch.float32)[:, None]
        value += len(tasks)
        bank.push(rows, torch.from_numpy(tasks))
        for t, v in zip(tasks.tolist(), rows[:, 0].tolist(), strict=True):
            fifo[t] = (fifo[t] + [v])[-size:]
        entries, owners, valid = bank.contents()
        for t in range(num_tasks):
            assert sorted(entries[(owners == t) & valid, 0].tolist()) == fifo[t]


def test_flops_matches_formula_and_warmup_is_linear() -> None:
    w = torch.tensor([[1.0, -2.0, 0.0], [3.0, 0.0, 0.5]])
    expected = ((1 + 3) / 2) ** 2 + ((2 + 0) / 2) ** 2 + ((0 + 0.5) / 2) ** 2
    assert flops_regularizer(w).item() == pytest.approx(expected)
    weights = [warmup_weight(2e-4, step, 1000) for step in (0, 250, 500, 1000, 5000)]
    assert weights == pytest.approx([0, 0.5e-4, 1e-4, 2e-4, 2e-4])
    assert warmup_weight(2e-4, 0, 0) == 2e-4


def test_retrieval_loss_returns_every_term() -> None:
    torch.manual_seed(4)
    q, p = torch.rand(4, 16), torch.rand(8, 16)
    attn, tasks = torch.rand(4, 5).softmax(-1), torch.tensor([0, 1, 0, 1])
    sparse = RetrievalLoss(LossSettings(flops_warmup_steps=10), num_tasks=2, num_prompts=5, sparse=True)
    terms = sparse(q, p, torch.tensor([0, 2, 4, 6]), step=5, attention=attn, tasks=tasks)
    assert set(terms) == {"contrastive", "cpr_pull", "cpr_push", "flops", "router_z", "router_balance", "router_mi",
                          "total"}
    assert terms["flops"].item() == pytest.approx(1e-4 * flops_regularizer(q).item())
    assert terms["total"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "total"))
    dense = RetrievalLoss(LossSettings(), num_tasks=2, num_prompts=5, sparse=False)
    terms = dense(q, p, torch.tensor([0, 2, 4, 6]), step=5)  # no prompt pool: no CPR
    assert terms["flops"].item() == terms["cpr_pull"].item() == terms["cpr_push"].item() == 0


@pytest.mark.slow
def test_two_processes_gather_passages_with_gradient(tmp_path: Path) -> None:
    torchrun_two(REPO / "tests" / "dist_loss_check.py", str(tmp_path))
    ranks = [torch.load(tmp_path / f"loss-rank{r}.pt") for r in range(2)]
    world = ranks[0]["world"]
    assert world == 2

    # the single-process computation over the whole global batch
    data = global_batch(world)
    q, p, logits = (data[k].clone().requires_grad_() for k in ("queries", "passages", "logits"))
    contrastive = contrastive_loss(q, p, torch.arange(world * B) * (1 + K), temperature=0.5)
    terms = ContrastivePromptRegularizer(num_tasks=2, num_prompts=logits.shape[1], weight=0.1)(
        logits.softmax(-1), data["tasks"])
    (contrastive + terms["cpr_pull"] + terms["cpr_push"]).backward()

    # rank losses average to the global loss; rank gradients averaged as DDP does equal the global gradients
    for name, value in [("contrastive", contrastive), *terms.items()]:
        assert sum(r[name] for r in ranks).item() / world == pytest.approx(value.item(), rel=1e-5), name
    for r, result in enumerate(ranks):
        rows, prows = slice(r * B, (r + 1) * B), slice(r * B * (1 + K), (r + 1) * B * (1 + K))
        torch.testing.assert_close(result["q_grad"] / world, q.grad[rows])
        torch.testing.assert_close(result["p_grad"] / world, p.grad[prows])  # includes the other rank's queries
        torch.testing.assert_close(result["logits_grad"] / world, logits.grad[rows])


@pytest.mark.parametrize("bank_size", [0, 4])
def test_cpr_is_the_same_whether_it_compacts_or_masks(monkeypatch, bank_size) -> None:
    """CPU runs compact the bank's filled slots and the summed pairs; accelerators keep every slot and mask (no count
    read back): the same terms and gradients, up to the order of the additions."""
    from hyper_retrieval.training import losses

    rng = np.random.default_rng(5)
    batches = [(torch.tensor(rng.dirichlet(np.ones(4), size=6), requires_grad=True),
                torch.from_numpy(rng.integers(3, size=6))) for _ in range(4)]
    results = []
    for devices in (("cpu",), ()):
        monkeypatch.setattr(losses, "COMPACTING_DEVICES", devices)
        cpr = ContrastivePromptRegularizer(num_tasks=3, num_prompts=4, bank_size=bank_size)
        steps = []
        for attention, tasks in batches:
            attention.grad = None
            terms = cpr(attention, tasks)
            (terms["cpr_pull"] + terms["cpr_push"]).backward()
            steps.append((terms["cpr_pull"].item(), terms["cpr_push"].item(), attention.grad.clone()))
        results.append(steps)
    for (pull, push, grad), (pull2, push2, grad2) in zip(*results, strict=True):
        assert pull == pytest.approx(pull2, rel=1e-6) and push == pytest.approx(push2, rel=1e-6)
        assert torch.allclose(grad, grad2, rtol=1e-5, atol=1e-7)
