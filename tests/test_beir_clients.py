"""MTEB and BEIR 2.2 on an exported HypeR model. MTEB over a local BEIR folder (hyper_retrieval.evaluation.mteb_task)
calls encode_query / encode_document and gives eval.py's nDCG@10. BEIR with the model object (its encode_queries /
encode_corpus) gives eval.py's nDCG@10; through models.SentenceBERT, which encodes both sides with plain encode, it
fails naming the two encoders instead of giving documents the query side."""

import json

import pytest
from beir.datasets.data_loader import GenericDataLoader
from beir.retrieval import models
from beir.retrieval.evaluation import EvaluateRetrieval
from beir.retrieval.search.dense import DenseRetrievalExactSearch

from modeling_hyper import HyperRetrieverModel


@pytest.fixture(scope="module")
def ropes(hub_run):
    """The sample eval.py scored in the hub run: (corpus, queries, qrels) as BEIR loads them, and eval.py's nDCG@10."""
    corpus, queries, qrels = GenericDataLoader(str(hub_run.model_dir.parent / "ropes")).load(split="test")
    expected = json.loads((hub_run.eval_dir / "results.json").read_text())["collections"]["ropes"]["metrics"]
    return corpus, queries, qrels, expected["ndcg@10"]


def test_beir_with_the_model_object_gives_eval_pys_ndcg(hub_run, ropes):
    corpus, queries, qrels, expected = ropes
    model = HyperRetrieverModel.from_pretrained(hub_run.export_dir)
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(model, batch_size=32), score_function="dot", k_values=[10])
    ndcg, *_ = retriever.evaluate(qrels, retriever.retrieve(corpus, queries), [10])
    assert ndcg["NDCG@10"] == round(expected, 5)


def test_beir_sentencebert_is_an_error_naming_the_two_encoders(hub_run, ropes):
    corpus, queries, _, _ = ropes
    model = models.SentenceBERT(str(hub_run.export_dir), trust_remote_code=True, device="cpu")
    retriever = EvaluateRetrieval(DenseRetrievalExactSearch(model, batch_size=32), score_function="dot", k_values=[10])
    with pytest.raises(ValueError, match=r"encode_query\(\.\.\.\) for queries.*encode_document\(\.\.\.\)"):
        retriever.retrieve(corpus, queries)


def test_mteb_on_a_local_beir_folder_gives_eval_pys_ndcg(hub_run, ropes):
    import mteb
    from sentence_transformers import SentenceTransformer

    from hyper_retrieval.evaluation.mteb_task import beir_folder_task

    *_, expected = ropes
    model = SentenceTransformer(str(hub_run.export_dir), trust_remote_code=True, device="cpu")
    result = mteb.evaluate(model, beir_folder_task(str(hub_run.model_dir.parent / "ropes"), "test"), cache=None,
                           overwrite_strategy="always", show_progress_bar=False)
    assert result[0].scores["test"][0]["ndcg_at_10"] == round(expected, 5)
