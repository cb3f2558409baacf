"""Training a HypeR model through sentence-transformers' own trainer: the task switch and the frozen parts hold."""

import shutil

import pytest
import torch

from hyper_retrieval.hub.export import export_for_hub
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

QUERIES = ["who wrote moby dick", "what causes the seasons", "where do tides come from",
           "what is the capital of france", "how do bees make honey", "when did the titanic sink",
           "why is the sky blue", "what do pandas eat"]
PASSAGES = ["Moby-Dick is a novel by Herman Melville.", "The tilt of Earth's axis causes the seasons.",
            "Tides are raised by the Moon's gravity.", "Paris is the capital of France.",
            "Bees make honey from flower nectar.", "The Titanic sank in April 1912.",
            "Rayleigh scattering makes the sky look blue.", "Giant pandas eat mostly bamboo."]


@pytest.fixture(scope="module")
def exported(minilm_path, tmp_path_factory):
    """A HypeR model with a separate, frozen passage encoder, exported as for the Hub."""
    root = tmp_path_factory.mktemp("st")
    torch.manual_seed(0)
    model = HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig(pool_size=3),
                                              share_encoders=False, freeze_passage_encoder=True, max_seq_length=64)
    model.calibrate_synthesizer(QUERIES)
    model.save_pretrained(root / "final")
    return export_for_hub(root / "final", root / "hub")


def test_the_trainer_with_a_router_mapping_trains_the_query_side_only(exported, tmp_path):
    from datasets import Dataset
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    st = SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")
    model = st[0].model
    assert not any(p.requires_grad for p in model.passage_encoder.parameters())  # frozen after loading too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sides = []
    forward = model.forward
    model.forward = lambda *args, **kwargs: sides.append(kwargs["is_query"]) or forward(*args, **kwargs)
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, use_cpu=True,
        report_to=[], save_strategy="no", router_mapping={"anchor": "query", "positive": "document"})
    data = Dataset.from_dict({"anchor": QUERIES, "positive": PASSAGES})
    SentenceTransformerTrainer(model=st, args=args, train_dataset=data,
                               loss=MultipleNegativesRankingLoss(st)).train()
    assert True in sides and False in sides  # anchors through the query side, positives through the passage side
    after = model.state_dict()
    passage = [k for k in after if k.startswith("passage_encoder.")]
    query = [k for k in after if k.startswith(("query_encoder.", "hyper_prompt."))]
    assert passage and all(torch.equal(after[k], before[k]) for k in passage)  # bit-identical
    assert any(not torch.equal(after[k], before[k]) for k in query)


@pytest.mark.parametrize(("listed", "says"), [
    ("[\"README.md\"", "not readable as JSON"),
    ('{"README.md": 1}', "expected a JSON list of relative paths, got dict"),
    ('["README.md", "../outside.txt"]', r"\['../outside.txt'\] lie outside"),
])
def test_a_broken_extra_files_list_is_refused_before_anything_is_written(exported, tmp_path, listed, says):
    from sentence_transformers import SentenceTransformer

    folder = tmp_path / "export"
    shutil.copytree(exported, folder)
    (tmp_path / "outside.txt").write_text("not part of the export")
    (folder / "extra_files.json").write_text(listed)
    st = SentenceTransformer(str(folder), trust_remote_code=True, device="cpu")
    with pytest.raises(ValueError, match=says) as error:
        st.save(str(tmp_path / "saved"))
    assert "extra_files.json" in str(error.value)
    assert not (tmp_path / "saved" / "model.safetensors").exists()


def test_every_saved_folder_loads_in_sentence_transformers_as_the_model_encodes(exported, splade_path, tmp_path):
    """final/ (a plain save_pretrained, not an export) loads with the model's own module: dense through
    SentenceTransformer, SPLADE through SparseEncoder, with the model's own numbers."""
    import numpy as np
    from sentence_transformers import SentenceTransformer, SparseEncoder

    final = exported.parent / "final"
    model = HyperRetrieverModel.from_pretrained(final)
    st = SentenceTransformer(str(final), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st.encode_query(QUERIES[:3]), model.encode_queries(QUERIES[:3]), atol=1e-6)
    np.testing.assert_allclose(st.encode_document(PASSAGES[:3]), model.encode_corpus(PASSAGES[:3]), atol=1e-6)

    sparse = HyperRetrieverModel.from_backbone(splade_path, hyper_prompt=HyperPromptConfig(pool_size=2),
                                               representation="sparse", max_seq_length=64)
    sparse.save_pretrained(tmp_path / "splade")
    encoder = SparseEncoder(str(tmp_path / "splade"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(encoder.encode_query(QUERIES[:3]).to_dense().numpy(),
                               sparse.encode_queries(QUERIES[:3]).toarray(), atol=1e-6)
    np.testing.assert_allclose(encoder.encode_document(PASSAGES[:3]).to_dense().numpy(),
                               sparse.encode_corpus(PASSAGES[:3]).toarray(), atol=1e-6)


def test_saving_through_sentence_transformers_keeps_every_file_of_the_hub_folder(exported, tmp_path):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(exported), trust_remote_code=True, device="cpu")
    st.save(str(tmp_path / "saved"))

    def files(folder):
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    assert files(tmp_path / "saved") == files(exported)
    for name in ("README.md", "handler.py", "widget.py", "adapter/hyper_prompt.safetensors", "adapter/README.md",
                 "model.safetensors"):
        assert (tmp_path / "saved" / name).read_bytes() == (exported / name).read_bytes(), name
    again = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True, device="cpu")
    assert torch.equal(torch.as_tensor(again.encode_query(QUERIES[:2])), torch.as_tensor(st.encode_query(QUERIES[:2])))
