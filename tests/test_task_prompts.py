"""The task-prompt oracle (synthesizer='task'): a prompt per training task, chosen by the query's task, the pool's mean
for any other task; evaluation gives every query its collection as its task, per collection and pooled."""

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from hyper_retrieval.data.beir import load_collection
from hyper_retrieval.evaluation.scoring import evaluate_collections
from hyper_retrieval.search.corpus_encoder import CorpusEncoder
from hyper_retrieval.search.searchers import ModelSearcher
from modeling_hyper import HyperPromptConfig, PromptSettingError
from tests.tiny import tiny_model

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"


@pytest.mark.parametrize("names", [None, ["qasc"], ["qasc", "qasc"], ["qasc", 3]])
def test_task_synthesizer_needs_one_distinct_name_per_prompt(names):
    with pytest.raises(PromptSettingError, match=r"task_names=.*expected 2 distinct task names") as raised:
        HyperPromptConfig(pool_size=2, synthesizer="task", task_names=names)
    assert raised.value.field == "task_names"


@pytest.fixture(scope="module")
def oracle(minilm_path):
    model = tiny_model(pool_size=2, prompt={"synthesizer": "task", "task_names": ["qasc", "vitaminc"]},
                       max_seq_length=64)
    model.tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    return model


def test_a_query_takes_its_tasks_prompt_and_other_tasks_the_mean(oracle):
    queries = ["which gas do plants take in", "the film grossed over a million", "what do roots absorb"]
    attention = oracle.prompt_attention(queries, task=["vitaminc", "ropes", "qasc"])
    np.testing.assert_array_equal(attention, [[0, 1], [0.5, 0.5], [1, 0]])
    np.testing.assert_array_equal(oracle.prompt_attention(queries), np.full((3, 2), 0.5))  # no task given
    alone = [oracle.encode_queries([q], task=t)[0] for q, t in zip(queries, ["vitaminc", "ropes", "qasc"],
                                                                  strict=True)]
    np.testing.assert_allclose(oracle.encode_queries(queries, task=["vitaminc", "ropes", "qasc"]), alone, atol=1e-6)
    with pytest.raises(ValueError, match="task: 2 task names for 3 queries"):
        oracle.encode_queries(queries, task=["qasc", "qasc"])


@pytest.mark.parametrize("pooled", [False, True])
def test_evaluation_gives_each_query_its_collections_task(oracle, pooled):
    collections = [load_collection(SAMPLE / name, "test") for name in ("qasc", "vitaminc", "ropes")]
    searcher = ModelSearcher(CorpusEncoder(oracle, "oracle", show_progress=False))
    results = evaluate_collections(searcher, collections, zero_shot={"ropes"}, k=10, pooled=pooled)
    expected = {"qasc": [1, 0], "vitaminc": [0, 1], "ropes": [0.5, 0.5]}
    for collection, result in zip(collections, results, strict=True):
        attention = result.attention  # what the search encoded, with its results
        np.testing.assert_array_equal(attention, np.tile(expected[collection.name], (len(collection.queries), 1)))
