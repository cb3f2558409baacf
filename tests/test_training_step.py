"""The training step train.py and bench/train.py share: batches built ahead in a thread, query token ids padded per
batch exactly as the tokenizer pads, a step that never reads a tensor back to Python, non-finite losses caught."""

import contextlib
import threading
import time

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from transformers import AutoTokenizer

from hyper_retrieval.data.beir import load_collection
from hyper_retrieval.training import losses
from hyper_retrieval.training.batching import BatchBuilder, TaskData, TokenizedTexts
from hyper_retrieval.training.config import LossSettings
from hyper_retrieval.training.examples import build_examples, first_queries
from hyper_retrieval.training.losses import RetrievalLoss, masked_sum
from hyper_retrieval.training.models import prompt_count
from hyper_retrieval.training.prefetch import prefetched
from hyper_retrieval.training.step import NonFiniteLoss, TrainingStep
from tests.tiny import tiny_model

COLLECTIONS = ("qasc", "vitaminc")


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def tasks(bbir) -> list[TaskData]:
    out = []
    for name in COLLECTIONS:
        collection = first_queries(load_collection(bbir / name, "train"), 40)
        out.append(TaskData(name, build_examples(collection, name, None, str(bbir / name / "qrels" / "train.tsv")),
                            {name: collection}))
    return out


@pytest.mark.parametrize("side", ["right", "left"])
def test_queries_tokenized_once_batch_exactly_as_the_tokenizer_pads(tokenizer, tasks, side):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side=side)
    texts = [ex.query for task in tasks for ex in task.examples]
    once = TokenizedTexts(tokenizer, texts, max_length=12, chunk=7)  # 12 tokens: many queries are cut
    assert (once.lengths == 12).any() and (once.lengths < 12).any()
    for rows in ([0], [3, 1, 2], list(range(len(texts)))[::-5]):
        expected = dict(tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=12,
                                  return_tensors="pt"))
        got = once.batch(rows)
        assert list(got) == list(expected)
        assert all(torch.equal(got[k], expected[k]) for k in expected)


def test_prefetched_keeps_order_builds_ahead_and_stops_with_the_loop():
    built = []

    def items():
        for i in range(100):
            built.append(i)
            yield i

    batches = prefetched(items(), depth=3)
    assert next(batches) == 0
    time.sleep(0.3)
    assert len(built) == 1 + 3 + 1  # the one taken, three queued, one waiting for room
    with contextlib.closing(batches):
        assert [next(batches) for _ in range(5)] == [1, 2, 3, 4, 5]
    time.sleep(0.3)
    assert len(built) < 100 and not any(t.name == "batch-prefetch" for t in threading.enumerate())


def test_prefetched_raises_the_builders_error_where_it_happened():
    def items():
        yield 1
        raise ValueError("row 7 of train.tsv: bad score")

    batches = prefetched(items())
    assert next(batches) == 1
    with pytest.raises(ValueError, match="row 7 of train.tsv"):
        next(batches)


@contextlib.contextmanager
def no_reads_from_the_device(monkeypatch):
    """Every Python-level way a step could wait for the device raises: .item(), .tolist(), bool/int/float of a tensor,
    .cpu(), .numpy(), nonzero/unique, and indexing by a boolean mask (whose size only the device knows)."""
    def refuse(name):
        def refused(*args, **kwargs):
            raise AssertionError(f"the training step read a tensor back with {name}")
        return refused

    for name in ("item", "tolist", "__bool__", "__int__", "__float__", "cpu", "numpy", "nonzero", "unique"):
        monkeypatch.setattr(torch.Tensor, name, refuse(name))
    monkeypatch.setattr(torch, "unique", refuse("torch.unique"))
    monkeypatch.setattr(torch, "nonzero", refuse("torch.nonzero"))
    for name in ("__getitem__", "__setitem__"):
        original = getattr(torch.Tensor, name)

        def checked(self, index, *rest, _original=original, _name=name):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                raise AssertionError(f"the training step indexed by a boolean mask ({_name})")
            return _original(self, index, *rest)
        monkeypatch.setattr(torch.Tensor, name, checked)
    yield
    monkeypatch.undo()


def step_for(model, num_tasks: int, settings: LossSettings, **step_options) -> TrainingStep:
    accelerator = Accelerator(cpu=True)
    optimizer = torch.optim.AdamW(model.parameter_groups(1e-3, 1e-2), fused=True)  # as on CUDA: counters on device
    model, optimizer = accelerator.prepare(model.train(), optimizer)
    return TrainingStep(accelerator, model, optimizer, RetrievalLoss(settings, num_tasks, prompt_count(model),
                                                                     sparse=False),
                        grad_clip=1.0, **step_options)


def test_a_step_reads_nothing_back_from_the_device(tokenizer, tasks, monkeypatch):
    """HypeR's pool with its synthesizer statistics and balance bias, CPR with the memory bank, the router terms, the
    false-negative mask, clipping, fused AdamW: several steps, and not one tensor read back to Python (the CPU taking
    the accelerators' path for masked sums)."""
    monkeypatch.setattr(losses, "COMPACTING_DEVICES", ())
    model = tiny_model(pool_size=4, prompt={"balance_bias_rate": 0.01})
    settings = LossSettings(memory_bank_size=4, router_z_weight=0.1, router_balance_weight=0.1, router_mi_weight=0.1)
    step = step_for(model, len(tasks), settings)
    builder = BatchBuilder(tasks, tokenizer, num_negatives=2, max_query_length=16, max_passage_length=32, seed=0)
    rng = np.random.default_rng(0)
    batches = [builder(rng.choice(80, 8, replace=False).tolist(), i) for i in range(4)]
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with no_reads_from_the_device(monkeypatch):
        outputs = [step(batch, i) for i, batch in enumerate(batches)]
    assert set(outputs[-1].losses) == set(RetrievalLoss.TERMS) and outputs[-1].attention.shape == (8, 4)
    assert all(bool(torch.isfinite(o.losses["total"])) for o in outputs)
    assert float(outputs[-1].losses["cpr_push"]) > 0 and float(outputs[-1].losses["router_mi"]) < 0
    assert not torch.equal(before["hyper_prompt.pool"], model.hyper_prompt.pool.detach())
    assert int(model.hyper_prompt.synthesizer.num_updates) == 4
    step.check()  # every loss was finite


def test_a_non_finite_loss_is_caught_at_the_next_check_with_its_step_and_terms(tokenizer, tasks):
    step = step_for(tiny_model(pool_size=None), len(tasks), LossSettings())
    builder = BatchBuilder(tasks, tokenizer, num_negatives=1, max_query_length=16, max_passage_length=32, seed=0,
                           lookup=lambda keys: (torch.randn(len(keys), 32), None))
    good = builder(list(range(8)), 0)
    bad = builder(list(range(8, 16)), 1)
    bad.passage_vectors[0] = float("nan")
    step(good, 0)
    step.check()
    step(bad, 1)  # the step itself does not stop: it does not look
    step(good, 2)
    with pytest.raises(NonFiniteLoss) as caught:
        step.check()
    assert caught.value.step == 1 and np.isnan(caught.value.terms["total"])
    assert np.isfinite(caught.value.terms["cpr_push"])


def test_masked_sums_agree_on_both_paths(monkeypatch):
    torch.manual_seed(0)
    values, mask = torch.rand(32, 224), torch.rand(32, 224) < 0.3
    compacted = masked_sum(values, mask)
    monkeypatch.setattr(losses, "COMPACTING_DEVICES", ())
    assert torch.allclose(masked_sum(values, mask), compacted, rtol=1e-6)
    assert float(masked_sum(values, torch.zeros_like(mask))) == 0.0
