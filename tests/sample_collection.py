"""Writes small BEIR-format collections for tests: hand-made ones, and samples of a real bbir collection."""

import json
from pathlib import Path


def write_collection(folder: Path, docs: list[dict], queries: list[dict], qrels: dict[str, list[tuple]]) -> Path:
    """corpus.jsonl, queries.jsonl and qrels/<split>.tsv (header line first) under ``folder``."""
    (folder / "qrels").mkdir(parents=True, exist_ok=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    for split, rows in qrels.items():
        lines = ["query-id\tcorpus-id\tscore"] + ["\t".join(map(str, r)) for r in rows]
        (folder / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return folder


def sample_of(source: Path, folder: Path, n_docs: int, split: str = "test", *more_splits: str) -> Path:
    """The first ``n_docs`` documents of a real collection, with the queries of ``split`` (and ``more_splits``)
    judged against them."""
    docs = [json.loads(line) for line in (source / "corpus.jsonl").read_text().splitlines()[:n_docs]]
    kept = {d["_id"] for d in docs}
    qrels = {}
    for name in (split, *more_splits):
        rows = [line.split("\t") for line in (source / "qrels" / f"{name}.tsv").read_text().splitlines()[1:]]
        qrels[name] = [r for r in rows if r[1] in kept]
    judged = {r[0] for rows in qrels.values() for r in rows}
    queries = [q for q in map(json.loads, (source / "queries.jsonl").read_text().splitlines()) if q["_id"] in judged]
    return write_collection(folder, docs, queries, qrels)
