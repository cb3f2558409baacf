"""Training examples from real and deliberately broken BEIR folders; per-step passage sampling."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hyper_retrieval.data.beir import DataError, load_collection
from hyper_retrieval.training.config import CollectionSettings, DataSettings
from hyper_retrieval.training.examples import (
    Example,
    build_examples,
    false_negative_mask,
    key_ids,
    load_task_examples,
    positive_key_ids,
    sample_passages,
)


def beir_folder(root: Path, qrels: list[tuple[str, str, int]], docs: int = 6) -> Path:
    """A tiny BEIR collection: docs d0..d{docs-1}, queries q0..q3, the given train judgements."""
    root.mkdir()
    (root / "corpus.jsonl").write_text("".join(
        json.dumps({"_id": f"d{i}", "title": "", "text": f"passage {i} about topic {i}"}) + "\n" for i in range(docs)))
    (root / "queries.jsonl").write_text("".join(
        json.dumps({"_id": f"q{i}", "text": f"question on topic {i}"}) + "\n" for i in range(4)))
    (root / "qrels").mkdir()
    (root / "qrels" / "train.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{s}\n" for q, d, s in qrels))
    return root


def test_examples_from_real_collection(bbir: Path, tmp_path: Path) -> None:
    data = DataSettings(negatives_cache_dir=str(tmp_path), negatives_depth=30)
    collection, examples = load_task_examples(CollectionSettings(str(bbir / "qasc"), task="science", max_queries=60),
                                              data)
    assert len(examples) == 60 and {ex.task for ex in examples} == {"science"}
    assert {ex.collection for ex in examples} == {"qasc"}
    for ex in examples:
        assert ex.query == collection.queries[ex.query_id]
        assert set(ex.positive_ids) == {d for d, s in collection.qrels[ex.query_id].items() if s > 0}
        assert ex.negative_ids and not set(ex.negative_ids) & set(ex.positive_ids)
    _, plain = load_task_examples(CollectionSettings(str(bbir / "qasc"), max_queries=5),
                                  DataSettings(negatives="none"))
    assert [ex.negative_ids for ex in plain] == [()] * 5 and plain[0].task == "qasc"
    with pytest.raises(ValueError, match="dense"):
        load_task_examples(CollectionSettings(str(bbir / "qasc"), max_queries=5), DataSettings(negatives="dense"))


def test_query_without_positive_is_a_logged_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = beir_folder(tmp_path / "c", [("q0", "d0", 1), ("q1", "d1", 0), ("q2", "d2", 1), ("q2", "d3", 0)])
    collection = load_collection(folder, "train")
    source = str(folder / "qrels" / "train.tsv")
    with caplog.at_level(logging.WARNING):
        examples = build_examples(collection, "t", None, source)
    assert [ex.query_id for ex in examples] == ["q0", "q2"]
    assert examples[1].positive_ids == ("d2",)  # the score-0 judgement is not a positive
    assert source in caplog.text and "skipped 1" in caplog.text and "'q1'" in caplog.text
    only_negative = load_collection(beir_folder(tmp_path / "z", [("q0", "d0", 0)]), "train")
    with pytest.raises(DataError, match=r"z/qrels/train\.tsv: no query with a positive"):
        build_examples(only_negative, "t", None, str(tmp_path / "z" / "qrels" / "train.tsv"))


def test_qrel_pointing_to_missing_document_names_file_and_id(tmp_path: Path) -> None:
    folder = beir_folder(tmp_path / "c", [("q0", "d0", 1), ("q1", "d99", 1)])
    with pytest.raises(DataError, match=r"c/qrels/train\.tsv: .*doc id\(s\) not in the corpus \(e\.g\. \['d99'\]\)"):
        load_task_examples(CollectionSettings(str(folder)), DataSettings(negatives="none"))


def test_bad_negatives_are_errors(tmp_path: Path) -> None:
    collection = load_collection(beir_folder(tmp_path / "c", [("q0", "d0", 1), ("q1", "d1", 1)]), "train")
    with pytest.raises(DataError, match=r"src\.tsv: query 'q1' has no entry in the hard negatives"):
        build_examples(collection, "t", {"q0": ["d2"]}, "src.tsv")
    with pytest.raises(DataError, match=r"src\.tsv: hard negative 'd42' is not in the corpus of c"):
        build_examples(collection, "t", {"q0": ["d2"], "q1": ["d42"]}, "src.tsv")


def test_sample_passages_is_deterministic_and_never_gold() -> None:
    corpus_ids = [f"d{i}" for i in range(20)]
    ex = Example("q", "text", ("d0", "d1"), ("d2", "d3", "d4", "d5", "d6"), "t", "c")
    draws = [sample_passages(ex, 3, np.random.default_rng(7), corpus_ids) for _ in range(2)]
    assert draws[0] == draws[1]
    picked = sample_passages(ex, 3, np.random.default_rng(8), corpus_ids)
    assert picked[0] in ex.positive_ids and set(picked[1:]) <= set(ex.negative_ids) and len(set(picked)) == 4
    topped_up = sample_passages(ex, 10, np.random.default_rng(9), corpus_ids)  # 5 mined + 5 random
    assert topped_up[1:6] == list(ex.negative_ids)
    assert len(set(topped_up[1:])) == 10 and not set(topped_up[1:]) & set(ex.positive_ids)
    with pytest.raises(ValueError, match="too small"):
        sample_passages(ex, 19, np.random.default_rng(0), corpus_ids)


def test_false_negative_mask_hides_other_gold_but_not_the_target() -> None:
    mask = false_negative_mask(positive_key_ids([{"c/a", "c/b"}, {"c/c"}]), key_ids(["c/a", "c/x", "c/c", "c/b"]),
                               targets=torch.tensor([0, 2]))
    assert mask.tolist() == [[False, False, False, True], [False, False, False, False]]
    assert mask.dtype == torch.bool


def test_key_ids_are_the_same_in_every_process() -> None:
    keys = ["nq_ckc/12", "qasc/12", "drop/a b"]
    script = ("from hyper_retrieval.training.examples import key_ids; "
              f"print(key_ids({keys!r}).tolist())")
    ids = [subprocess.run([sys.executable, "-c", script], env=os.environ | {"PYTHONHASHSEED": seed}, check=True,
                          capture_output=True, text=True).stdout.strip() for seed in ("1", "2")]
    assert ids[0] == ids[1] == str(key_ids(keys).tolist())
    assert len(set(key_ids(keys).tolist())) == 3 and min(key_ids(keys).tolist()) >= 0
