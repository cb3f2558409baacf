"""The training step train.py and bench/train.py share: batches built ahead in a thread, query token ids padded per
batch exactly as the tokenizer pads, a step that never reads a tensor back to Python, non-finite losses caught."""

import contextlib
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
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
from hyper_retrieval.training.passage_table import PassageTable
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
def test_queries_tokenized_once_batch_exactly_as_the_tokenizer_pads(tokenizer, tasks, side, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tokenizer.name_or_path, padding_side=side)
    texts = [ex.query for task in tasks for ex in task.examples]
    once = TokenizedTexts(tokenizer, texts, max_length=12, chunk=7)  # 12 tokens: many queries are cut
    assert (once.lengths == 12).any() and (once.lengths < 12).any()
    computed = TokenizedTexts(tokenizer, texts, max_length=12, cache_dir=tmp_path)
    (entry,) = tmp_path.glob("*.tokens")
    written = (entry / "manifest.json").stat().st_mtime_ns
    cached = TokenizedTexts(tokenizer, texts, max_length=12, cache_dir=tmp_path)  # reads the first one's store
    assert list(tmp_path.glob("*.tokens")) == [entry] and (entry / "manifest.json").stat().st_mtime_ns == written
    for rows in ([0], [3, 1, 2], list(range(len(texts)))[::-5]):
        expected = dict(tokenizer([texts[r] for r in rows], padding=True, truncation=True, max_length=12,
                                  return_tensors="pt"))
        for tokenized in (once, computed, cached):
            got = tokenized.batch(rows)
            assert list(got) == list(expected)
            assert all(torch.equal(got[k], expected[k]) for k in expected)
    other = TokenizedTexts(tokenizer, texts[1:], max_length=12, cache_dir=tmp_path)  # other texts, another entry
    assert len(list(tmp_path.glob("*.tokens"))) == 2 and len(other) == len(texts) - 1


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


@pytest.mark.parametrize("passages", ["encoded", "table"])
def test_a_step_reads_nothing_back_from_the_device(tokenizer, tasks, monkeypatch, passages):
    """HypeR's pool with its synthesizer statistics and balance bias, CPR with the memory bank, the router terms, the
    false-negative mask, clipping, fused AdamW, passages encoded or gathered from a table (MaxP windows): several
    steps, and not one tensor read back to Python (the CPU taking the accelerators' path for masked sums)."""
    monkeypatch.setattr(losses, "COMPACTING_DEVICES", ())
    model = tiny_model(pool_size=4, prompt={"balance_bias_rate": 0.01})
    settings = LossSettings(memory_bank_size=4, router_z_weight=0.1, router_balance_weight=0.1, router_mi_weight=0.1)
    table = PassageTable(*random_vectors(tasks, windows=3)) if passages == "table" else None
    step = step_for(model, len(tasks), settings, passage_table=table)
    builder = BatchBuilder(tasks, tokenizer, num_negatives=2, max_query_length=16, max_passage_length=32, seed=0,
                           passage_rows=table.rows if table is not None else None)
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


def random_vectors(tasks, sparse: bool = False, windows: int = 1):
    """What a PassageTable is built from, random (32 dimensions) over the tasks' corpora: corpora, vectors and
    window_doc by collection; with `windows` > 1 every third passage has that many windows."""
    rng = np.random.default_rng(0)
    corpora = {name: c.corpus for t in tasks for name, c in t.collections.items()}
    window_doc = {name: np.repeat(np.arange(len(c)), np.where(np.arange(len(c)) % 3 == 0, windows, 1))
                  for name, c in corpora.items()}
    vectors = {name: rng.standard_normal((len(doc), 32)).astype(np.float32) for name, doc in window_doc.items()}
    if sparse:  # most entries zero, as a sparse model's
        vectors = {name: sp.csr_matrix(np.where(v > 1.0, v, 0.0)) for name, v in vectors.items()}
    return corpora, vectors, window_doc


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("windows", [1, 3])
def test_the_table_gathers_on_the_device_exactly_what_its_rows_name(tasks, sparse, windows, monkeypatch):
    corpora, vectors, window_doc = random_vectors(tasks, sparse, windows)
    table = PassageTable(corpora, vectors, window_doc)
    picks = [("vitaminc", 4), ("vitaminc", 3), ("qasc", 6), ("vitaminc", 0), ("vitaminc", 3), ("qasc", 0)]
    rows, mask = table.rows([f"{name}/{corpora[name].ids[i]}" for name, i in picks])
    with no_reads_from_the_device(monkeypatch):
        got = table.gather(rows, mask)
    expected = np.zeros((len(picks), windows, 32), dtype=np.float32)
    for i, (name, doc) in enumerate(picks):
        own = vectors[name][np.flatnonzero(window_doc[name] == doc)]
        expected[i, : own.shape[0]] = own.toarray() if sparse else own
    if windows == 1:
        assert mask is None
        np.testing.assert_array_equal(got.numpy(), expected[:, 0])
    else:
        assert mask.sum(1).tolist() == [1, 3, 3, 3, 3, 3]
        np.testing.assert_array_equal(got.numpy(), expected)


def test_a_non_finite_loss_is_caught_at_the_next_check_with_its_step_and_terms(tokenizer, tasks):
    table = PassageTable(*random_vectors(tasks))
    step = step_for(tiny_model(pool_size=None), len(tasks), LossSettings(), passage_table=table)
    builder = BatchBuilder(tasks, tokenizer, num_negatives=1, max_query_length=16, max_passage_length=32, seed=0,
                           passage_rows=table.rows)
    good = builder(list(range(8)), 0)
    bad = builder(list(range(8, 16)), 1)
    step(good, 0)
    table.table[bad.passage_rows[0, 0]] = float("nan")
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
