"""Many hyper-prompt adapters on one frozen backbone: load_adapter / set_adapter / delete_adapter, per-call adapters,
one passage index for all, and the refusals (another backbone, another hidden size, a backbone that trained)."""

import copy

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from modeling_hyper import HyperPromptConfig, HyperRetrieverModel
from tests.tiny import tiny_model

QUERIES = ["who wrote moby dick", "what causes the seasons on earth", "boiling point of water at altitude"]
PASSAGES = ["Moby-Dick is a novel by Herman Melville.", "Axial tilt causes the seasons.", "Water boils at 100 C."]
FROZEN = dict(freeze_query_backbone=True, share_encoders=False, freeze_passage_encoder=True,
              backbone_name_or_path="tiny-bert")


@pytest.fixture(scope="module")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


def trained_like(model: HyperRetrieverModel, seed: int, scale: float = 0.5) -> HyperRetrieverModel:
    """The model with its prompt modules moved away from their initialisation (as training would), calibrated."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.hyper_prompt.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    model.calibrate_synthesizer(QUERIES + PASSAGES)
    return model


@pytest.fixture(scope="module")
def adapters(tokenizer, tmp_path_factory):
    """Two adapters trained (in effect) on one frozen tiny backbone: their models and their saved folders."""
    root = tmp_path_factory.mktemp("adapters")
    first = tiny_model(pool_size=4, seed=0, **FROZEN)
    first.tokenizer = tokenizer
    second = copy.deepcopy(first)
    second.hyper_prompt.reset_pool()
    models = {"a": trained_like(first, 1), "b": trained_like(second, 2)}
    for name, model in models.items():
        model.save_adapter(root / name)
    return models, root


def plain_backbone(models: dict) -> HyperRetrieverModel:
    base = copy.deepcopy(models["a"])
    base.delete_adapter("default")
    assert base.hyper_prompt is None and base.active_adapter is None and base.adapter_names == []
    return base


def backbone_with_both(models: dict, root) -> HyperRetrieverModel:
    """The plain backbone with adapters a and b loaded (a active: the first loaded)."""
    base = plain_backbone(models)
    base.load_adapter(root / "a", adapter_name="a")
    base.load_adapter(root / "b", adapter_name="b")
    return base


def test_two_adapters_on_one_backbone_give_each_ones_own_vectors(adapters):
    models, root = adapters
    base = plain_backbone(models)
    assert base.load_adapter(root / "a", adapter_name="a") == "a"
    base.load_adapter(root / "b", adapter_name="b")
    assert base.adapter_names == ["a", "b"] and base.active_adapter == "a"  # the first loaded becomes active
    for name, alone in models.items():
        base.set_adapter(name)
        assert base.active_adapter == name and base.active_adapters() == [name]
        vectors, attention = base.encode_queries(QUERIES, return_prompt_attention=True)
        own, own_attention = alone.encode_queries(QUERIES, return_prompt_attention=True)
        np.testing.assert_array_equal(vectors, own)
        np.testing.assert_array_equal(attention, own_attention)
        single = plain_backbone(models)
        single.load_adapter(root / name, adapter_name=name)
        np.testing.assert_array_equal(single.encode_queries(QUERIES), own)
    assert not np.allclose(models["a"].encode_queries(QUERIES), models["b"].encode_queries(QUERIES))


def test_per_call_adapter_leaves_the_active_one(adapters):
    models, root = adapters
    base = backbone_with_both(models, root)
    np.testing.assert_array_equal(base.encode_queries(QUERIES, adapter="b"), models["b"].encode_queries(QUERIES))
    np.testing.assert_array_equal(base.prompt_attention(QUERIES, adapter="b"), models["b"].prompt_attention(QUERIES))
    assert base.active_adapter == "a"
    np.testing.assert_array_equal(base.encode_queries(QUERIES), models["a"].encode_queries(QUERIES))
    with pytest.raises(ValueError, match=r"no adapter named 'c'; loaded: \['a', 'b'\]"):
        base.encode_queries(QUERIES, adapter="c")
    assert base.active_adapter == "a"


def test_switching_adapters_leaves_passage_vectors_unchanged(adapters):
    models, root = adapters
    plain = plain_backbone(models).encode_corpus(PASSAGES)
    base = backbone_with_both(models, root)
    for name in ("a", "b", None):
        base.set_adapter(name)
        np.testing.assert_array_equal(base.encode_corpus(PASSAGES), plain)
    np.testing.assert_array_equal(models["b"].encode_corpus(PASSAGES), plain)


def test_delete_and_set_adapter(adapters):
    models, root = adapters
    plain_queries = plain_backbone(models).encode_queries(QUERIES)
    base = backbone_with_both(models, root)
    base.delete_adapter("a")
    assert base.adapter_names == ["b"] and base.active_adapter is None
    np.testing.assert_array_equal(base.encode_queries(QUERIES), plain_queries)  # the plain backbone again
    base.set_adapter("b")
    assert base.config.hyper_prompt == models["b"].config.hyper_prompt
    assert base.config.hyper_prompt["backbone_frozen"] is True
    assert base.config.hyper_prompt["base_model_name_or_path"] == "tiny-bert"
    with pytest.raises(ValueError, match=r"no adapter named 'a'; loaded: \['b'\]"):
        base.set_adapter("a")
    with pytest.raises(ValueError, match=r"no adapter named 'a'; loaded: \['b'\]"):
        base.delete_adapter("a")
    with pytest.raises(ValueError, match="an adapter named 'b' is loaded already"):
        base.load_adapter(root / "b", adapter_name="b")


def test_adapter_on_another_backbone_is_refused_naming_both(adapters, tokenizer, tmp_path):
    models, root = adapters
    other = tiny_model(pool_size=None, **{**FROZEN, "backbone_name_or_path": "other-bert"})
    other.tokenizer = tokenizer
    with pytest.raises(ValueError, match="trained on the backbone 'tiny-bert', this model's is 'other-bert'"):
        other.load_adapter(root / "a")
    wider = tiny_model(pool_size=2, **FROZEN, prompt={"token_dim": None})
    wide_config = wider.config.backbone_config
    wide_config.hidden_size, wide_config.intermediate_size = 64, 128
    wide = HyperRetrieverModel(type(wider.config)(**{**wider.config.to_dict(), "backbone_config": wide_config,
                                                     "hyper_prompt": HyperPromptConfig(pool_size=2).to_dict()}))
    wide.save_adapter(tmp_path / "wide")
    with pytest.raises(ValueError, match=r"hidden size 64\).*\('tiny-bert', hidden size 32\)"):
        plain_backbone(models).load_adapter(tmp_path / "wide")


def test_adapter_of_a_trained_backbone_needs_its_own(adapters, tmp_path):
    models, _ = adapters
    unfrozen = tiny_model(pool_size=4, backbone_name_or_path="tiny-bert")  # freeze_query_backbone False
    unfrozen.save_adapter(tmp_path / "unfrozen")
    with pytest.raises(ValueError, match="trained with its query backbone unfrozen, so it needs its own backbone"):
        plain_backbone(models).load_adapter(tmp_path / "unfrozen")
    config = HyperPromptConfig.from_pretrained(tmp_path / "unfrozen")
    config.backbone_frozen = None  # saved before the field existed
    config.save_pretrained(tmp_path / "unfrozen")
    with pytest.raises(ValueError, match="does not record whether its query backbone was frozen"):
        plain_backbone(models).load_adapter(tmp_path / "unfrozen")
    base = plain_backbone(models)
    base.attach_adapter(tmp_path / "unfrozen")  # onto its own model: allowed, as before
    assert base.active_adapter == "default"


def test_automodel_then_any_number_of_adapters(adapters, tmp_path):
    """A saved model through AutoModel (the folder's remote code), then adapters by folder; save keeps the active."""
    models, root = adapters
    plain_backbone(models).save_pretrained(tmp_path / "backbone")
    model = AutoModel.from_pretrained(tmp_path / "backbone", trust_remote_code=True)
    for name in ("a", "b"):
        model.load_adapter(root / name, adapter_name=name)
    model.set_adapter("b")
    np.testing.assert_array_equal(model.encode_queries(QUERIES), models["b"].encode_queries(QUERIES))
    model.load_adapter(root, subfolder="a", adapter_name="a-again")  # a folder's subfolder, as an export's adapter/
    np.testing.assert_array_equal(model.encode_queries(QUERIES, adapter="a-again"),
                                  models["a"].encode_queries(QUERIES))
    model.save_pretrained(tmp_path / "with-b")
    again = AutoModel.from_pretrained(tmp_path / "with-b", trust_remote_code=True)
    assert again.adapter_names == ["default"]
    np.testing.assert_array_equal(again.encode_queries(QUERIES), models["b"].encode_queries(QUERIES))


def test_real_minilm_adapters_share_one_passage_index(minilm_path, tmp_path):
    """On the real MiniLM: adapters trained with the backbone frozen load onto the plain backbone, which encodes the
    passages once for all of them."""
    torch.manual_seed(0)
    frozen = HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig(pool_size=3),
                                               freeze_query_backbone=True, share_encoders=False,
                                               freeze_passage_encoder=True)
    trained_like(frozen, 3, scale=0.01).save_adapter(tmp_path / "adapter")
    base = HyperRetrieverModel.from_backbone(minilm_path)
    base.load_adapter(tmp_path / "adapter", adapter_name="qa")
    np.testing.assert_array_equal(base.encode_queries(QUERIES), frozen.encode_queries(QUERIES))
    np.testing.assert_allclose(base.encode_corpus(PASSAGES), frozen.encode_corpus(PASSAGES), atol=1e-6)
    scores = base.encode_queries(QUERIES) @ base.encode_corpus(PASSAGES).T
    assert (scores.argmax(axis=1) == np.arange(3)).all()  # each query finds its passage through the adapter
