"""Reading BEIR-format collections: the real bbir data, the Hub layout through datasets, pooling, bad inputs."""

import json
import logging

import numpy as np
import pytest
from sample_collection import write_collection

from hyper_retrieval.data.beir import (
    Corpus,
    DataError,
    load_collection,
    load_hub_collection,
    load_qrels,
    load_queries,
    pooled_collection,
    split_pooled,
)

DOCS = [{"_id": "d1", "title": "T1", "text": "alpha"}, {"_id": "d2", "title": "", "text": "beta"},
        {"_id": "d3", "text": "gamma"}]
QUERIES = [{"_id": "q1", "text": "first"}, {"_id": "q2", "text": "second"}, {"_id": "q3", "text": "third"}]


@pytest.fixture
def toy(tmp_path):
    return write_collection(tmp_path / "toy", DOCS, QUERIES,
                            {"train": [("q1", "d1", 1)], "test": [("q2", "d2", 1), ("q2", "d3", 2), ("q3", "d1", 1)]})


def test_corpus_reads_real_collection_in_file_order(bbir):
    path = bbir / "ropes" / "corpus.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    corpus = Corpus.from_jsonl(path)
    assert len(corpus) == json.loads((bbir / "ropes" / "meta.json").read_text())["docs"] == len(rows)
    assert corpus.ids == [r["_id"] for r in rows] == list(corpus)
    rng = np.random.default_rng(0)
    picked = [rows[i] for i in rng.choice(len(rows), 50, replace=False)]
    expected = [{"title": r["title"], "text": r["text"]} for r in picked]
    assert corpus.get_many([r["_id"] for r in picked]) == expected
    assert corpus[rows[7]["_id"]] == {"title": rows[7]["title"], "text": rows[7]["text"]}
    assert [d for batch in corpus.batches(100) for d in batch] == [{"title": r["title"], "text": r["text"]}
                                                                    for r in rows]
    assert rows[3]["_id"] in corpus and "no-such-id" not in corpus
    with pytest.raises(KeyError, match="no-such-id"):
        corpus["no-such-id"]


def test_load_collection_real_split(bbir):
    collection = load_collection(bbir / "ropes", "test")
    meta = json.loads((bbir / "ropes" / "meta.json").read_text())
    assert collection.name == "ropes"
    assert len(collection.queries) == len(collection.qrels) == meta["test_queries"]
    assert set(collection.queries) == set(collection.qrels)
    assert all(d in collection.corpus for docs in collection.qrels.values() for d in docs)


def test_corpus_from_records_matches_jsonl(toy):
    from_file = Corpus.from_jsonl(toy / "corpus.jsonl")
    from_list = Corpus.from_records(DOCS)
    assert from_list.ids == from_file.ids
    assert from_list.get_many(["d3", "d1"]) == from_file.get_many(["d3", "d1"]) == [
        {"title": "", "text": "gamma"}, {"title": "T1", "text": "alpha"}]


def test_hub_layout_through_datasets(toy, tmp_path):
    """BEIR's Hub layout (<name> with configs corpus/queries, <name>-qrels) read by datasets.load_dataset from
    local folders shaped like those repos."""
    hub = tmp_path / "hub" / "toy"
    hub.mkdir(parents=True)
    for name in ("corpus.jsonl", "queries.jsonl"):
        (hub / name).write_text((toy / name).read_text())
    (hub / "README.md").write_text("---\nconfigs:\n" + "".join(
        f"- config_name: {c}\n  data_files:\n  - split: {c}\n    path: {c}.jsonl\n" for c in ("corpus", "queries"))
        + "---\n")
    (hub.parent / "toy-qrels").mkdir()
    for split in ("train", "test"):
        (hub.parent / "toy-qrels" / f"{split}.tsv").write_text((toy / "qrels" / f"{split}.tsv").read_text())

    from_hub = load_hub_collection(str(hub), "test", cache_dir=str(tmp_path / "cache"))
    local = load_collection(toy, "test")
    assert from_hub.name == "toy"
    assert from_hub.queries == local.queries and from_hub.qrels == local.qrels
    assert from_hub.corpus.ids == local.corpus.ids
    assert from_hub.corpus.get_many(local.corpus.ids) == local.corpus.get_many(local.corpus.ids)
    with pytest.raises(DataError, match="no split 'dev'.*train"):
        load_hub_collection(str(hub), "dev", cache_dir=str(tmp_path / "cache"))


def test_pooled_collection_keeps_ids_distinct(bbir):
    parts = [load_collection(bbir / name, "test") for name in ("ropes", "multirc")]
    pool = pooled_collection(parts)
    assert len(pool.corpus) == sum(len(c.corpus) for c in parts)
    assert len(set(pool.corpus.ids)) == len(pool.corpus)
    assert len(pool.queries) == sum(len(c.queries) for c in parts)
    for c in parts:
        doc_id = c.corpus.ids[5]
        assert pool.corpus[f"{c.name}/{doc_id}"] == c.corpus[doc_id]
        assert split_pooled(pool.qrels, c.name) == {
            f"{c.name}/{q}": {f"{c.name}/{d}": s for d, s in docs.items()} for q, docs in c.qrels.items()}
    assert all(d in pool.corpus for docs in pool.qrels.values() for d in docs)


def test_malformed_json_line_names_file_and_line(toy):
    lines = (toy / "corpus.jsonl").read_text().splitlines()
    lines.insert(2, '{"_id": "d9", "text": ')
    (toy / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:3: malformed JSON"):
        load_collection(toy, "test")


@pytest.mark.parametrize("row, field", [({"_id": "q9"}, "text"), ({"text": "no id"}, "_id")])
def test_row_missing_a_field(toy, row, field):
    with open(toy / "queries.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"queries\.jsonl:4: row has no '{field}'"):
        load_queries(toy / "queries.jsonl")


def test_duplicate_doc_id(toy):
    with open(toy / "corpus.jsonl", "a") as f:
        f.write(json.dumps({"_id": "d2", "text": "again"}) + "\n")
    with pytest.raises(DataError, match=r"corpus\.jsonl:4: duplicate _id 'd2'.*corpus\.jsonl:2"):
        Corpus.from_jsonl(toy / "corpus.jsonl")


def test_missing_split_lists_available_splits(toy):
    with pytest.raises(DataError, match=r"no split 'dev'.*available splits: \['test', 'train'\]"):
        load_collection(toy, "dev")


def test_missing_file(toy):
    (toy / "queries.jsonl").unlink()
    with pytest.raises(DataError, match="no queries.jsonl"):
        load_collection(toy, "test")


@pytest.mark.parametrize(("row", "match"), [
    ("q3\td2\n", r"test\.tsv:5: expected 3 tab-separated columns.*got 2"),
    ("q3\td 2\t1\n", r"test\.tsv:5: id 'd 2' is empty or contains whitespace"),  # a TREC run could not hold it
])
def test_a_bad_qrels_row_is_named_with_its_line(toy, row, match):
    with open(toy / "qrels" / "test.tsv", "a") as f:
        f.write(row)
    with pytest.raises(DataError, match=match):
        load_qrels(toy / "qrels" / "test.tsv")


def test_empty_split(toy):
    (toy / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n")
    with pytest.raises(DataError, match="split is empty"):
        load_collection(toy, "test")


def test_unknown_ids_reported_with_counts(toy, caplog):
    with open(toy / "qrels" / "test.tsv", "a") as f:
        f.write("q3\tmissing1\t1\nq3\tmissing2\t1\nq404\td1\t1\nq405\tmissing1\t1\n")
    with pytest.raises(DataError, match=r"4 judgement\(s\) name unknown ids: 2 query id\(s\).*2 doc id\(s\)"):
        load_collection(toy, "test")
    with caplog.at_level(logging.WARNING):
        collection = load_collection(toy, "test", on_unknown="skip")
    assert "4 judgement(s) name unknown ids" in caplog.text
    assert collection.qrels == {"q2": {"d2": 1, "d3": 2}, "q3": {"d1": 1}}
    assert set(collection.queries) == {"q2", "q3"}


def test_another_split_reuses_the_loaded_corpus(bbir):
    from hyper_retrieval.data.beir import load_split

    train = load_collection(bbir / "ropes", "train")
    dev = load_split(bbir / "ropes", "dev", train.corpus)
    fresh = load_collection(bbir / "ropes", "dev")
    assert dev.corpus is train.corpus and dev.name == fresh.name == "ropes"
    assert dev.queries == fresh.queries and dev.qrels == fresh.qrels
    with pytest.raises(DataError, match=r"no split 'validation' .*available splits: \['dev', 'test', 'train'\]"):
        load_split(bbir / "ropes", "validation", train.corpus)


@pytest.mark.parametrize("file", ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"])
def test_bytes_that_are_not_utf8_are_named_with_file_and_line(toy, file):
    path = toy / file
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b"d", b"\xff\xfed", 1) if b"d" in lines[1] else b"\xff" + lines[1]
    path.write_bytes(b"".join(lines))
    with pytest.raises(DataError, match=rf"{file.split('/')[-1].replace('.', '[.]')}:2: not UTF-8 text"):
        load_collection(toy, "test")


@pytest.mark.parametrize(("file", "row", "message"), [
    ("corpus.jsonl", {"_id": "d9", "text": None}, "text must be a string, got None"),
    ("corpus.jsonl", {"_id": "d9", "text": 12345}, "text must be a string, got 12345 \\(int\\)"),
    ("corpus.jsonl", {"_id": "d9", "title": ["x"], "text": "t"}, "title must be a string or null"),
    ("queries.jsonl", {"_id": "q9", "text": None}, "text must be a string, got None"),
    ("queries.jsonl", {"_id": "q9", "text": "   "}, "query 'q9' is empty"),
])
def test_null_non_string_and_empty_fields_are_named(toy, file, row, message):
    with open(toy / file, "a") as f:
        f.write(json.dumps(row) + "\n")
    with pytest.raises(DataError, match=rf"{file.replace('.', '[.]')}:4: {message}"):
        load_collection(toy, "test")
    if file == "corpus.jsonl":  # the same check for in-memory records
        with pytest.raises(DataError, match=rf"records row 0: {message}"):
            Corpus.from_records([row])


def test_the_command_lines_print_one_line_for_bad_data(toy, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    with open(toy / "corpus.jsonl", "a") as f:
        f.write('{"_id": "d9", "text": null}\n')
    result = subprocess.run([sys.executable, str(repo / "eval.py"), "--model", "bm25", "--data", str(toy),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=repo)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"data error: {toy / 'corpus.jsonl'}:4: text must be")
    clash = tmp_path / "other" / "toy"
    write_collection(clash, DOCS, QUERIES, {"test": [("q2", "d2", 1)]})
    result = subprocess.run([sys.executable, str(repo / "eval.py"), "--model", "bm25", "--data", str(toy), str(clash),
                             "--out", str(tmp_path / "out2")], capture_output=True, text=True, cwd=repo)
    assert result.returncode != 0 and "several collections are named ['toy']" in result.stderr


@pytest.mark.parametrize(("file", "line", "match"), [
    ("corpus.jsonl", '{"_id": "d9", "text": "half a pair \\ud800 here"}', r"corpus\.jsonl:4: text holds a lone "
                                                                           r"surrogate '\\ud800' at character 12"),
    ("queries.jsonl", '{"_id": "q\\udfff", "text": "a query"}', r"queries\.jsonl:4: _id holds a lone surrogate"),
    ("corpus.jsonl", '{"_id": "doc 9", "text": "x"}', r"corpus\.jsonl:4: id 'doc 9' is empty or contains whitespace"),
    ("queries.jsonl", '{"_id": "q\\t9", "text": "x"}', r"queries\.jsonl:4: id 'q\\t9' is empty or contains"),
    ("corpus.jsonl", '{"_id": "", "text": "x"}', r"corpus\.jsonl:4: id '' is empty"),
])
def test_texts_and_ids_no_tool_could_use_are_refused_at_load_with_file_and_line(toy, file, line, match):
    with open(toy / file, "a") as f:
        f.write(line + "\n")
    with pytest.raises(DataError, match=match):
        load_collection(toy, "test")


def test_a_byte_order_mark_is_read_past_in_qrels_as_in_the_json_files(toy):
    expected = load_collection(toy, "test")
    documents = list(expected.corpus.items())  # read now: the corpus reads its file on demand
    for name in ("qrels/test.tsv", "corpus.jsonl", "queries.jsonl"):
        path = toy / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    found = load_collection(toy, "test")
    assert found.qrels == expected.qrels and found.queries == expected.queries
    assert list(found.corpus.items()) == documents
