"""The router: diagnostics against hand-computed values, the synthesizer variants, batch independence, running
statistics through save/AutoModel, the router loss terms, and a synthetic multi-task problem that needs routing."""

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from tiny import random_batch, tiny_model

from hyper_retrieval.evaluation.routing import routing_diagnostics
from hyper_retrieval.training.config import LossSettings
from hyper_retrieval.training.losses import (
    RetrievalLoss,
    router_balance_loss,
    router_z_loss,
    task_prompt_information,
)
from modeling_hyper import HyperPromptConfig

VARIANTS = [{"synthesizer": "release"}, {"synthesizer": "standardized"}, {"synthesizer": "cosine"},
            {"synthesizer": "standardized", "balance_bias_rate": 0.1},
            {"synthesizer": "release", "balance_bias_rate": 0.1}]


def test_diagnostics_against_hand_computed_values():
    attention = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.2, 0.6, 0.2]])
    tasks = ["a", "a", "b", "b"]
    d = routing_diagnostics(attention, tasks)
    h = lambda p: -sum(x * math.log(x) for x in p)  # noqa: E731
    assert d["entropy"] == pytest.approx((2 * h([0.7, 0.2, 0.1]) + h([0.1, 0.2, 0.7]) + h([0.2, 0.6, 0.2]))
                                         / 4 / math.log(3))
    assert d["top_share"] == 0.5  # top prompts 0, 0, 2, 1
    # joint (task, top): (a,0)=1/2, (b,2)=1/4, (b,1)=1/4; MI = H(top) - H(top | task) = 1.5 ln 2 - 0.5 ln 2 = ln 2
    assert d["task_mi"] == pytest.approx(1.0)
    logits = np.log(attention)
    logits -= logits.mean(1, keepdims=True)
    common = logits.mean(0)
    assert d["common_variance"] == pytest.approx(4 * (common**2).sum() / (logits**2).sum())
    mean_a, mean_b = attention[:2].mean(0), attention[2:].mean(0)
    m = (mean_a + mean_b) / 2
    js = 0.5 * (mean_a * np.log(mean_a / m)).sum() + 0.5 * (mean_b * np.log(mean_b / m)).sum()
    assert d["task_js"] == pytest.approx(js)


def test_diagnostics_of_a_collapsed_and_of_a_task_routed_pool():
    collapsed = routing_diagnostics(np.tile([[1.0, 0.0, 0.0]], (6, 1)), list("aabbcc"))
    assert collapsed["top_share"] == 1 and collapsed["task_mi"] == 0 and collapsed["task_js"] == 0
    assert collapsed["entropy"] == pytest.approx(0, abs=1e-9) and collapsed["common_variance"] == pytest.approx(1)
    routed = routing_diagnostics(np.eye(3).repeat(2, axis=0), list("aabbcc"))
    assert routed["task_mi"] == pytest.approx(1) and routed["top_share"] == pytest.approx(1 / 3)
    assert routed["common_variance"] == pytest.approx(0, abs=1e-9)
    assert routing_diagnostics(np.eye(3).repeat(2, axis=0), list("aaaaaa"))["task_mi"] is None
    with pytest.raises(ValueError, match="task labels"):
        routing_diagnostics(np.eye(3), ["a"])


def test_router_losses_against_hand_computed_values():
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])
    assert router_z_loss(logits).item() == pytest.approx((math.log(4.0) ** 2 + (1 + math.log(2.0)) ** 2) / 2)
    attention = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    # top shares (0.5, 0.5), mean attention (0.6, 0.4): 2 * (0.5 * 0.6 + 0.5 * 0.4) = 1
    assert router_balance_loss(attention).item() == pytest.approx(1.0)
    assert router_balance_loss(torch.tensor([[0.9, 0.1], [0.8, 0.2]])).item() == pytest.approx(2 * 0.85)
    tasks = torch.tensor([0, 0, 1, 1])
    p0, p1, p = torch.tensor([0.85, 0.15]), torch.tensor([0.35, 0.65]), torch.tensor([0.6, 0.4])
    kl = lambda a, b: (a * (a / b).log()).sum().item()  # noqa: E731
    assert task_prompt_information(attention, tasks, 2).item() == pytest.approx(0.5 * kl(p0, p) + 0.5 * kl(p1, p))
    settings = LossSettings(router_z_weight=0.1, router_balance_weight=0.2, router_mi_weight=0.3)
    terms = RetrievalLoss(settings, 2, 2, sparse=False)(
        torch.rand(4, 8), torch.rand(4, 8), torch.arange(4), 0, attention, tasks, logits=attention.log())
    assert terms["router_mi"].item() == pytest.approx(-0.3 * task_prompt_information(attention, tasks, 2).item())
    assert terms["router_balance"].item() == pytest.approx(0.2)
    assert terms["total"].item() == pytest.approx(sum(v.item() for k, v in terms.items() if k != "total"))


@pytest.mark.parametrize("prompt", VARIANTS, ids=lambda p: "+".join(f"{k}={v}" for k, v in p.items()))
def test_a_querys_attention_and_vector_do_not_depend_on_its_batch(prompt):
    model = tiny_model(pool_size=4, prompt=prompt)
    model.train()
    for seed in range(3):  # running statistics and balancing bias move, as in training
        model(*random_batch(batch=8, seed=seed))
    model.eval()
    ids, mask = random_batch(batch=6, seed=9, pad_rows={1: 4, 4: 2})
    with torch.no_grad():
        together = model(ids, mask)
        for row in range(len(ids)):
            alone = model(ids[row : row + 1], mask[row : row + 1])
            torch.testing.assert_close(alone.prompt_attention, together.prompt_attention[row : row + 1],
                                       atol=1e-6, rtol=0)
            torch.testing.assert_close(alone.embeddings, together.embeddings[row : row + 1], atol=1e-5, rtol=0)


def test_standardized_synthesizer_removes_what_all_queries_share():
    """A shift common to every query's q makes the release form route every query alike, not the standardized one."""
    for kind, collapses in (("release", True), ("standardized", False)):
        model = tiny_model(pool_size=5, prompt={"synthesizer": kind})
        synthesizer = model.hyper_prompt.synthesizer
        with torch.no_grad():
            synthesizer.norm.bias.fill_(3.0)  # every coordinate of q shifted, as MiniLM's LayerNorm'd max-pool is
        ids, mask = random_batch(batch=64, length=8, seed=5)
        model.train()
        with torch.no_grad():
            attention = model(ids, mask).prompt_attention
        d = routing_diagnostics(attention.numpy(), ["t"] * 64)
        assert (d["top_share"] > 0.9) == collapses, (kind, d)
        assert (d["common_variance"] > 0.5) == collapses, (kind, d)


def test_running_statistics_follow_the_training_batches():
    model = tiny_model(pool_size=3, prompt={"synthesizer": "standardized", "synthesizer_momentum": 0.5})
    synthesizer = model.hyper_prompt.synthesizer
    ids, mask = random_batch(batch=16, seed=2)
    embeddings = model.query_encoder.get_input_embeddings()(ids)
    q = synthesizer.pooled_query(embeddings, mask).detach()
    model.train()
    model(ids, mask)  # the first batch's statistics are taken whole (cumulative average)
    torch.testing.assert_close(synthesizer.running_mean, q.mean(0))
    torch.testing.assert_close(synthesizer.running_var, q.var(0, unbiased=False))
    model.eval()
    model(*random_batch(batch=16, seed=3))  # eval: frozen
    torch.testing.assert_close(synthesizer.running_mean, q.mean(0))
    assert int(synthesizer.num_updates) == 1


def test_balancing_bias_moves_against_the_overloaded_prompt():
    model = tiny_model(pool_size=4, prompt={"synthesizer": "release", "balance_bias_rate": 0.5})
    synthesizer = model.hyper_prompt.synthesizer
    with torch.no_grad():
        model.hyper_prompt.pool[2].add_(5.0)  # prompt 2 wins every query
    model.train()
    ids, mask = random_batch(batch=16, seed=2)
    model(ids, mask)
    assert synthesizer.balance_bias[2] == -0.5 and (synthesizer.balance_bias[[0, 1, 3]] == 0.5).all()
    for _ in range(200):
        model(ids, mask)
    loads = torch.bincount(model(ids, mask).prompt_attention.argmax(-1), minlength=4)
    assert loads.max() < 16  # no longer one prompt for all


def test_temperature_is_learnable_and_bounded():
    model = tiny_model(pool_size=3, prompt={"synthesizer": "cosine"})
    synthesizer = model.hyper_prompt.synthesizer
    assert synthesizer.log_temperature.requires_grad
    assert float(synthesizer.current_temperature().detach()) == pytest.approx(0.5)
    with torch.no_grad():
        synthesizer.log_temperature.fill_(-20.0)
    assert float(synthesizer.current_temperature().detach()) == pytest.approx(0.25)  # scale at most 4
    names = {n for g in model.parameter_groups(1e-5, 1e-3) if g["name"] == "hyper_prompt" for n in g["params"]}
    assert any(p is synthesizer.log_temperature for p in names)
    with pytest.raises(ValueError, match="synthesizer_temperature"):
        HyperPromptConfig(synthesizer="cosine", synthesizer_temperature=3.0)
    with pytest.raises(ValueError, match="synthesizer_temperature"):
        HyperPromptConfig(synthesizer="cosine", synthesizer_temperature=0.05)  # below the default bound 0.25
    sharp = tiny_model(pool_size=3, prompt={"synthesizer": "cosine", "synthesizer_temperature": 0.05,
                                            "synthesizer_min_temperature": 0.01}).hyper_prompt.synthesizer
    with torch.no_grad():
        sharp.log_temperature.fill_(-20.0)
    assert float(sharp.current_temperature().detach()) == pytest.approx(0.01)  # scale at most 100


def test_config_saved_before_variants_loads_as_the_release_form():
    old = {"pool_size": 5, "temperature": 3.0, "init": "uniform", "init_std": 0.02}
    config = HyperPromptConfig.from_dict(old)
    assert (config.synthesizer, config.synthesizer_temperature, config.prompt_init) == ("release", 3.0, "uniform")


LOAD_ATTENTION = textwrap.dedent(
    """
    import sys, torch
    from transformers import AutoModel
    model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
    batch = torch.load(sys.argv[2])
    with torch.no_grad():
        out = model(batch["ids"], batch["mask"])
    torch.save({"attention": out.prompt_attention, "embeddings": out.embeddings}, sys.argv[3])
    """
)


@pytest.mark.parametrize("synthesizer", ["standardized", "cosine"])
def test_running_statistics_round_trip_through_automodel(synthesizer, tmp_path):
    model = tiny_model(pool_size=4, prompt={"synthesizer": synthesizer, "balance_bias_rate": 0.05})
    model.train()
    for seed in range(4):
        model(*random_batch(batch=8, seed=seed))
    model.eval()
    stats = model.hyper_prompt.synthesizer.running_mean.clone()
    assert stats.abs().sum() > 0
    model.save_pretrained(tmp_path / "saved")
    ids, mask = random_batch(batch=5, seed=11, pad_rows={0: 3})
    torch.save({"ids": ids, "mask": mask}, tmp_path / "batch.pt")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    result = subprocess.run([sys.executable, "-c", LOAD_ATTENTION, str(tmp_path / "saved"), str(tmp_path / "batch.pt"),
                             str(tmp_path / "out.pt")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    loaded = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        mine = model(ids, mask)
    torch.testing.assert_close(loaded["attention"], mine.prompt_attention, atol=0, rtol=0)
    torch.testing.assert_close(loaded["embeddings"], mine.embeddings, atol=0, rtol=0)
    # and the adapter alone carries them too
    model.save_adapter(tmp_path / "adapter")
    other = tiny_model(pool_size=None).attach_adapter(tmp_path / "adapter")
    torch.testing.assert_close(other.hyper_prompt.synthesizer.running_mean, stats)


def synthetic_tasks(num_tasks: int, batch: int, seed: int, length: int = 8, words: int = 16):
    """Queries of task t are random tokens from the t-th of `num_tasks` small vocabularies of `words` tokens (tasks
    differ in their words, as real tasks do): (ids (B, T), mask (B, T), tasks (B,))."""
    g = torch.Generator().manual_seed(seed)
    tasks = torch.arange(batch) % num_tasks
    ids = 1000 + tasks[:, None] * words + torch.randint(0, words, (batch, length), generator=g)
    return ids, torch.ones_like(ids), tasks


def test_default_synthesizer_learns_to_route_tasks_that_need_different_prefixes():
    """Three tasks; the query backbone is frozen, so only the prompt can move a query's vector, and each task's
    queries must retrieve their own task's passage: a single prefix cannot, a per-task prefix can. The default
    synthesizer, trained with the method's loss (contrastive + CPR), sends each task to its own prompt."""
    torch.manual_seed(0)
    num_tasks, steps = 3, 60
    model = tiny_model(pool_size=4, freeze_query_backbone=True)
    assert model.hyper_prompt.config.synthesizer == HyperPromptConfig().synthesizer == "cosine"
    passages = torch.nn.functional.normalize(torch.randn(num_tasks, 32), dim=-1)
    loss_fn = RetrievalLoss(LossSettings(contrastive_temperature=0.1, cpr_weight=0.1), num_tasks, 4, sparse=False)
    optimizer = torch.optim.AdamW(model.parameter_groups(0.0, 1e-2))
    model.train()
    for step in range(steps):
        ids, mask, tasks = synthetic_tasks(num_tasks, 24, seed=step)
        out = model(ids, mask)
        losses = loss_fn(torch.nn.functional.normalize(out.embeddings, dim=-1), passages, tasks, step,
                         out.prompt_attention, tasks, logits=out.prompt_logits)
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    embed = model.query_encoder.get_input_embeddings()
    model.hyper_prompt.synthesizer.calibrate(
        (embed(ids), mask) for ids, mask, _ in (synthetic_tasks(num_tasks, 24, seed=s) for s in range(10)))
    ids, mask, tasks = synthetic_tasks(num_tasks, 300, seed=1000)
    with torch.no_grad():
        attention = model(ids, mask).prompt_attention
    d = routing_diagnostics(attention.numpy(), tasks.tolist())
    assert d["task_mi"] >= 0.5, d
