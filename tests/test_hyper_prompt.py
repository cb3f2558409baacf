"""The prompt pool's attention and the adapter's config: shapes, normalisation, padding, validation."""

import pytest
import torch
from tiny import random_batch, tiny_backbone_config, tiny_model

from modeling_hyper import HyperConfig, HyperPromptConfig, HyperRetrieverModel


def attention_of(model, ids, mask):
    with torch.no_grad():
        return model(ids, mask).prompt_attention


def test_attention_is_a_distribution_per_query_and_differs_between_queries():
    model = tiny_model(pool_size=6)
    ids, mask = random_batch(batch=5, pad_rows={2: 3})
    attention = attention_of(model, ids, mask)
    assert attention.shape == (5, 6)
    assert (attention >= 0).all()
    torch.testing.assert_close(attention.sum(-1), torch.ones(5))
    assert torch.cdist(attention, attention).triu(1)[torch.ones(5, 5).triu(1).bool()].min() > 1e-4


def test_padding_does_not_change_attention_or_embedding():
    model = tiny_model(pool_size=6)
    ids, mask = random_batch(batch=2, length=6)
    padded_ids = torch.cat([ids, torch.zeros(2, 5, dtype=ids.dtype)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(2, 5, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        short, long = model(ids, mask), model(padded_ids, padded_mask)
    torch.testing.assert_close(long.prompt_attention, short.prompt_attention, atol=1e-6, rtol=0)
    torch.testing.assert_close(long.embeddings, short.embeddings, atol=1e-5, rtol=0)


def test_padding_is_masked_after_the_adapter():
    """A pad token whose adapted vector would win the max-pool must not change the attention (release defect 3)."""
    model = tiny_model(pool_size=6)
    synthesizer = model.hyper_prompt.synthesizer
    with torch.no_grad():
        synthesizer.adapter[2].bias.fill_(0.0)
        synthesizer.adapter[2].weight.mul_(100.0)
    ids, mask = random_batch(batch=1, length=6)
    pads = torch.full((1, 4), 7, dtype=ids.dtype)  # any token id: masked positions must not matter
    other = attention_of(model, torch.cat([ids, pads], 1), torch.cat([mask, torch.zeros_like(pads)], 1))
    plain = attention_of(model, ids, mask)
    torch.testing.assert_close(other, plain, atol=1e-6, rtol=0)


def test_prefix_shapes():
    model = tiny_model(pool_size=3, num_virtual_tokens=5)
    ids, mask = random_batch(batch=2)
    prefix, attention, logits = model.hyper_prompt(model.query_encoder.get_input_embeddings()(ids), mask)
    assert prefix.keys.shape == (2, 2, 4, 5, 8)  # (layers, B, heads, L, head_dim)
    assert prefix.values.shape == prefix.keys.shape
    assert attention.shape == logits.shape == (2, 3)


@pytest.mark.parametrize(
    "field, value",
    [("pool_size", 0), ("num_virtual_tokens", 0), ("synthesizer_temperature", 0.0), ("prompt_dropout", 1.0),
     ("prompt_init", "zeros"), ("synthesizer", "mlp"), ("balance_bias_rate", -1.0), ("synthesizer_momentum", 0.0)],
)
def test_bad_prompt_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        HyperPromptConfig(**{field: value})


def test_unknown_prompt_key_is_named():
    with pytest.raises(ValueError, match="pool_sise"):
        HyperPromptConfig.from_dict({"pool_sise": 4})


def test_prompt_shape_must_match_backbone():
    prompt = HyperPromptConfig(token_dim=64).to_dict()
    with pytest.raises(ValueError, match="token_dim=64 does not match the backbone's 32"):
        HyperRetrieverModel(HyperConfig(backbone_config=tiny_backbone_config(), hyper_prompt=prompt))


@pytest.mark.parametrize(
    "field, value",
    [("pooling", "max"), ("representation", "colbert"), ("attention_backend", "flash"), ("max_seq_length", 1)],
)
def test_bad_model_settings_are_named(field, value):
    with pytest.raises(ValueError, match=field):
        HyperConfig(backbone_config=tiny_backbone_config(), **{field: value})


def test_prompt_needs_an_attention_interface_backbone():
    from transformers import MPNetConfig

    mpnet = MPNetConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ValueError, match="attention interface"):
        HyperRetrieverModel(HyperConfig(backbone_config=mpnet, hyper_prompt={}, attention_backend="eager"))
    plain = HyperRetrieverModel(HyperConfig(backbone_config=mpnet, attention_backend="eager"))  # no prompt: fine
    ids, mask = random_batch()
    assert plain(ids, mask).embeddings.shape == (3, 32)


def test_parameter_groups_split_backbone_and_prompt():
    model = tiny_model(pool_size=4)
    groups = {g["name"]: g for g in model.parameter_groups(backbone_lr=2e-5, prompt_lr=1e-3, weight_decay=0.01)}
    prompt_params = {id(p) for p in model.hyper_prompt.parameters()}
    assert {id(p) for p in groups["hyper_prompt"]["params"]} == prompt_params
    assert groups["hyper_prompt"]["lr"] == 1e-3 and groups["hyper_prompt"]["weight_decay"] == 0.0
    assert groups["backbone"]["lr"] == 2e-5 and groups["backbone"]["weight_decay"] == 0.01
    no_decay = groups["backbone_no_decay"]["params"]
    assert all(p.ndim == 1 for p in no_decay) and groups["backbone_no_decay"]["weight_decay"] == 0.0
    grouped = sum(len(g["params"]) for g in groups.values())
    assert grouped == sum(1 for p in model.parameters() if p.requires_grad)
    frozen = tiny_model(pool_size=4, freeze_query_backbone=True)
    assert [g["name"] for g in frozen.parameter_groups(2e-5, 1e-3)] == ["hyper_prompt"]
