"""A model folder saved by earlier code loads with today's and gives the same vectors (tests/fixtures/saved-model,
written by tests/fixtures/make_saved_model.py before hyper_retrieval moved into layered subpackages)."""

import sys
from pathlib import Path

import numpy as np

from modeling_hyper import HyperRetrieverModel

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_saved_model import PASSAGES, QUERIES  # noqa: E402


def test_a_model_saved_before_the_move_gives_identical_vectors():
    expected = np.load(FIXTURES / "saved-model-expected.npz")
    model = HyperRetrieverModel.from_pretrained(FIXTURES / "saved-model")
    queries, attention = model.encode_queries(QUERIES, return_prompt_attention=True)
    np.testing.assert_allclose(queries, expected["queries"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(attention, expected["attention"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(model.encode_corpus(PASSAGES), expected["passages"], rtol=0, atol=1e-6)
    assert not np.allclose(expected["attention"], 1 / 3)  # the pool routes: the check covers the synthesizer
