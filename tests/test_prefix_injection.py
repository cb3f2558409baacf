"""The deep prefix: closed it is the plain backbone, open it steers the output, and it trains under checkpointing."""

import copy

import pytest
import torch
from tiny import random_batch, tiny_model
from transformers import AutoModel

BACKENDS = ["sdpa", "eager"]


def plain_backbone(model, backend: str):
    """A stock encoder of the same class and weights, with a stock attention kernel."""
    plain = AutoModel.from_config(
        copy.deepcopy(model.config.backbone_config), attn_implementation=backend, add_pooling_layer=False
    )
    plain.load_state_dict(model.query_encoder.state_dict())
    return plain.eval()


@pytest.mark.parametrize("padding", [{}, {1: 5, 2: 2}])
@pytest.mark.parametrize("kind", ["bert", "roberta", "xlm-roberta"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_closed_prefix_equals_plain_backbone(kind, backend, padding):
    model = tiny_model(kind, pool_size=4, num_virtual_tokens=3, attention_backend=backend, normalize=False)
    ids, mask = random_batch(pad_rows=padding)
    closed = torch.zeros(ids.shape[0], 3, dtype=torch.bool)
    with torch.no_grad():
        ours = model(ids, mask, prefix_mask=closed).last_hidden_state
        plain = plain_backbone(model, backend)(input_ids=ids, attention_mask=mask).last_hidden_state
        opened = model(ids, mask).last_hidden_state
    real = mask.bool()
    # Closed columns get exactly zero attention weight; the kernels still reduce over P more (masked) columns, so the
    # sums are ordered differently and the two agree to float32 rounding, not bit for bit.
    torch.testing.assert_close(ours[real], plain[real], atol=1e-6, rtol=0)
    assert (opened[real] - plain[real]).abs().max() > 1e-3  # the open prefix does change the encoding


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_sdpa_and_eager_agree_with_open_prefix(kind):
    ids, mask = random_batch(pad_rows={0: 4})
    outs = []
    for backend in BACKENDS:
        with torch.no_grad():
            outs.append(tiny_model(kind, attention_backend=backend)(ids, mask).embeddings)
    torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=1e-5)


def test_passages_get_no_prefix():
    model = tiny_model(pool_size=4)
    ids, mask = random_batch()
    with torch.no_grad():
        passage = model(ids, mask, is_query=False)
        plain = plain_backbone(model, "sdpa")(input_ids=ids, attention_mask=mask).last_hidden_state
    assert passage.prompt_attention is None
    assert torch.equal(passage.last_hidden_state, plain)


def prompt_gradients(model):
    model.train()
    ids, mask = random_batch(pad_rows={1: 4})
    model(ids, mask).embeddings.pow(2).sum().backward()
    prompt = model.hyper_prompt
    return {
        "pool": prompt.pool.grad,
        "projection": prompt.projection[0].weight.grad,
        "synthesizer": prompt.synthesizer.adapter[0].weight.grad,
        "backbone": model.query_encoder.encoder.layer[0].attention.self.query.weight.grad,
    }


@pytest.mark.parametrize("checkpointing", [False, True])
def test_gradients_reach_pool_projection_synthesizer(checkpointing):
    model = tiny_model(pool_size=4)
    if checkpointing:
        model.gradient_checkpointing_enable()
        assert model.query_encoder.encoder.layer[0].gradient_checkpointing
    grads = prompt_gradients(model)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum() > 0, name


def test_checkpointing_gives_the_same_gradients():
    ref = prompt_gradients(tiny_model(pool_size=4))
    model = tiny_model(pool_size=4)
    model.gradient_checkpointing_enable()
    for name, grad in prompt_gradients(model).items():
        torch.testing.assert_close(grad, ref[name], atol=1e-6, rtol=1e-5, msg=name)


def test_frozen_backbone_gets_no_gradient():
    model = tiny_model(pool_size=4, freeze_query_backbone=True)
    grads = prompt_gradients(model)
    assert grads["backbone"] is None
    assert all(p.grad is None for p in model.query_encoder.parameters())
    assert grads["pool"].abs().sum() > 0


def test_single_prefix_has_no_synthesizer_and_trains():
    model = tiny_model(pool_size=1)
    assert model.hyper_prompt.synthesizer is None
    model.train()
    ids, mask = random_batch()
    out = model(ids, mask)
    assert torch.equal(out.prompt_attention, torch.ones(3, 1))
    out.embeddings.sum().backward()
    assert model.hyper_prompt.pool.grad.abs().sum() > 0
