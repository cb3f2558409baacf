"""Queries are read as in training: config.max_query_length (saved by train.py) cuts queries in every encode path,
passages keep max_seq_length, and a model saved without the setting reads queries as before."""

import json
from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

from modeling_hyper import HyperConfig, HyperRetrieverModel

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "saved-model"
LONG = "who wrote moby dick a novel by herman melville about a whale where is the sun"


def test_queries_are_cut_at_max_query_length_and_passages_are_not(tmp_path):
    model = HyperRetrieverModel.from_pretrained(FIXTURE)
    assert model.config.max_query_length is None and model.config.query_length == model.config.max_seq_length
    before = model.encode_queries([LONG])
    model.config.max_query_length = 6  # [CLS] + 4 word pieces + [SEP]
    ids = model.tokenizer(LONG)["input_ids"]
    head = model.tokenizer.decode(ids[1:5])
    cut, attention = model.encode_queries([LONG], return_prompt_attention=True)
    np.testing.assert_allclose(cut, model.encode_queries([head]), atol=1e-6)
    assert not np.allclose(cut, before, atol=1e-4)
    np.testing.assert_allclose(attention, model.prompt_attention([head]), atol=1e-6)
    passage = model.encode_corpus([LONG])  # passages are read to max_seq_length
    model.config.max_query_length = None
    np.testing.assert_allclose(passage, model.encode_corpus([LONG]), atol=1e-6)

    model.config.max_query_length = 6
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["max_query_length"] == 6
    st = SentenceTransformer(str(tmp_path / "saved"), trust_remote_code=True, device="cpu")
    np.testing.assert_allclose(st.encode_query([LONG]), cut, atol=1e-5)
    np.testing.assert_allclose(st.encode_document([LONG]), passage, atol=1e-5)


def test_max_query_length_is_checked():
    with pytest.raises(ValueError, match="max_query_length=1"):
        HyperConfig(max_query_length=1)
