"""Training passages looked up from a frozen passage encoder's precomputed vectors
(hyper_retrieval.training.passage_table)."""

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from tiny import tiny_model
from transformers import AutoTokenizer

from hyper_retrieval.data.beir import Corpus
from hyper_retrieval.training.passage_table import PassageTable

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


def frozen_model(minilm_path, representation: str = "dense"):
    model = tiny_model(share_encoders=False, freeze_passage_encoder=True, representation=representation,
                       max_seq_length=64)
    model.tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return model


@pytest.mark.parametrize("representation", ["dense", "sparse"])
def test_lookup_equals_the_frozen_encoder_without_dropout(representation, minilm_path, tmp_path):
    model = frozen_model(minilm_path, representation).train()
    corpora = {name: Corpus.from_jsonl(SAMPLE / name / "corpus.jsonl") for name in ("qasc", "cosmosqa")}
    table = PassageTable.encode(model, corpora, tmp_path, show_progress=False)
    assert model.training  # the table leaves the model's mode as it found it
    picks = [("cosmosqa", 3), ("qasc", 0), ("qasc", -1), ("cosmosqa", 0), ("qasc", 7)]
    got, mask = table.lookup([f"{name}/{corpora[name].ids[i]}" for name, i in picks])
    got = got.numpy()
    assert mask is None  # FirstP: one vector per passage

    model.eval()
    expected = [model.encode_corpus(corpora[name].get_many([corpora[name].ids[i]])) for name, i in picks]
    expected = np.concatenate([e.toarray() if sp.issparse(e) else e for e in expected])
    assert got.shape == expected.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_systems_sharing_the_encoder_share_the_cached_vectors(minilm_path, tmp_path):
    corpora = {"qasc": Corpus.from_jsonl(SAMPLE / "qasc" / "corpus.jsonl")}
    first = PassageTable.encode(frozen_model(minilm_path), corpora, tmp_path, show_progress=False)
    cached = sorted(tmp_path.glob("*.vectors"))
    assert len(cached) == 1
    written = (cached[0] / "vectors.npy").stat().st_mtime_ns
    second_model = frozen_model(minilm_path)
    second_model.query_encoder.embeddings.word_embeddings.weight.data += 1  # a different (trained) query side
    second = PassageTable.encode(second_model, corpora, tmp_path, show_progress=False)
    assert sorted(tmp_path.glob("*.vectors")) == cached and (cached[0] / "vectors.npy").stat().st_mtime_ns == written
    keys = [f"qasc/{i}" for i in corpora["qasc"].ids[:4]]
    np.testing.assert_array_equal(first.lookup(keys)[0].numpy(), second.lookup(keys)[0].numpy())


def test_needs_a_separate_frozen_passage_encoder(minilm_path, tmp_path):
    model = tiny_model(share_encoders=True)
    with pytest.raises(ValueError, match="frozen passage encoder"):
        PassageTable.encode(model, {}, tmp_path)
