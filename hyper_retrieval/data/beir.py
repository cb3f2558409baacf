"""Reading BEIR-format collections: corpus.jsonl, queries.jsonl and qrels/<split>.tsv, locally or from the Hub.

A local collection folder holds ``corpus.jsonl`` ({"_id", "title", "text"} per line), ``queries.jsonl``
({"_id", "text"} per line) and ``qrels/<split>.tsv`` (``query-id corpus-id score`` with a header line). On the Hub,
BEIR keeps ``<name>`` with the configs ``corpus`` and ``queries`` and the relevance judgements in ``<name>-qrels``.

The corpus is never turned into one Python dict per passage: :class:`Corpus` keeps the ids and a numpy array of byte
offsets into the file and reads passages on demand.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hyper_retrieval.core.fingerprints import short_digest

logger = logging.getLogger(__name__)

Document = dict[str, str]  # {"title": str, "text": str}
Qrels = dict[str, dict[str, int]]  # query id -> {doc id -> relevance}


class DataError(ValueError):
    """A collection file is missing, malformed or inconsistent; the message names the file (and line)."""


def _iter_jsonl(path: Path, required: Sequence[str]) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yields (line number from 1, byte offset of the line, parsed row) for every non-blank line of a JSONL file.

    Raises DataError naming ``path:line`` for a line that is not a JSON object or lacks one of ``required``.
    """
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            start, offset = offset, offset + len(raw)
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in required:
                if key not in row:
                    raise DataError(f"{path}:{lineno}: row has no {key!r} field (fields: {sorted(row)})")
            _check_fields(row, f"{path}:{lineno}")
            yield lineno, start, row


def _check_fields(row: Mapping[str, Any], where: str) -> None:
    """A row's "_id" is a string or an integer that a TREC run can hold, its "text" a string, its "title" (if any) a
    string or null, all of them encodable as UTF-8."""
    if "_id" in row and (isinstance(row["_id"], bool) or not isinstance(row["_id"], str | int)):
        raise DataError(f"{where}: _id must be a string, got {row['_id']!r}")
    if "text" in row and not isinstance(row["text"], str):
        raise DataError(f"{where}: text must be a string, got {row['text']!r} ({type(row['text']).__name__})")
    if row.get("title") is not None and not isinstance(row["title"], str):
        raise DataError(f"{where}: title must be a string or null, got {row['title']!r}")
    for key in ("_id", "text", "title"):
        if isinstance(row.get(key), str):
            _check_encodable(row[key], f"{where}: {key}")
    if "_id" in row:
        check_id(str(row["_id"]), where)


def _check_encodable(text: str, where: str) -> None:
    """DataError for a string holding a lone surrogate (an escape such as \\ud800 without its pair): no tokenizer,
    file or metric can take it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(f"{where} holds a lone surrogate {text[e.start]!r} at character {e.start}; "
                        "fix the escape in the file") from None


def check_id(doc_id: str, where: str) -> None:
    """DataError for an id that a TREC run file (whitespace-separated columns) cannot hold, or an empty one."""
    if not doc_id or any(c.isspace() for c in doc_id):
        raise DataError(f"{where}: id {doc_id!r} is empty or contains whitespace, which a TREC run file cannot "
                        "hold; rename it")


def _check_unique(ids: Sequence[str], where: Sequence[str], source: str) -> None:
    """Raises DataError if an id occurs twice; ``where[i]`` says where ids[i] was read (e.g. 'file:line')."""
    seen: dict[str, int] = {}
    for i, doc_id in enumerate(ids):
        if doc_id in seen:
            raise DataError(f"{where[i]}: duplicate _id {doc_id!r} in {source} (first at {where[seen[doc_id]]})")
        seen[doc_id] = i


class _JsonlRows:
    """Rows of a JSONL file read on demand; ``offsets`` (n + 1,) int64: each row's first byte, then the file size."""

    def __init__(self, path: Path, offsets: np.ndarray) -> None:
        self.path = path
        self.offsets = offsets

    def read(self, rows: np.ndarray) -> list[Document]:
        """Documents of the given row numbers (m,), in that order; reads the file in offset order, one open."""
        out: list[Document] = [{}] * len(rows)
        with open(self.path, "rb") as f:
            for pos in np.argsort(rows, kind="stable"):
                row = rows[pos]
                f.seek(self.offsets[row])
                out[pos] = _document(json.loads(f.read(self.offsets[row + 1] - self.offsets[row])))
        return out


class _RecordRows:
    """Rows held by an in-memory sequence of mappings (a list of dicts, or a ``datasets.Dataset``)."""

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        self.records = records

    def read(self, rows: np.ndarray) -> list[Document]:
        """Documents of the given row numbers (m,), in that order."""
        return [_document(self.records[int(r)]) for r in rows]


def _document(row: Mapping[str, Any]) -> Document:
    return {"title": row.get("title") or "", "text": row["text"]}


class Corpus(Mapping[str, Document]):
    """A read-only mapping doc id -> {"title", "text"} whose passages stay on disk (or in their Arrow table).

    Iteration yields ids in file order. ``ids`` is that list; the lookup from id to row is a sorted numpy array
    (binary search), so no per-passage Python object besides the id string is kept.
    """

    def __init__(self, ids: list[str], parts: list[_JsonlRows | _RecordRows], fingerprint: str) -> None:
        """Use :meth:`from_jsonl`, :meth:`from_records` or :meth:`concatenate`; ``parts`` hold the rows in order."""
        self.ids = ids
        self.fingerprint = fingerprint
        self.components: list[Corpus] = []  # for a pool (see concatenate): the corpora it holds, in order
        self._parts = parts
        sizes = [len(p.offsets) - 1 if isinstance(p, _JsonlRows) else len(p.records) for p in parts]
        self._bounds = np.cumsum([0, *sizes])  # (len(parts) + 1,) first row of each part
        id_array = np.asarray(ids, dtype=str)
        self._order = np.argsort(id_array, kind="stable")
        self._sorted_ids = id_array[self._order]

    @classmethod
    def from_jsonl(cls, path: str | os.PathLike) -> Corpus:
        """Indexes a corpus.jsonl file in one pass (ids + byte offsets); raises DataError naming file:line."""
        path = Path(path)
        ids: list[str] = []
        starts: list[int] = []
        where: list[str] = []
        for lineno, start, row in _iter_jsonl(path, ("_id", "text")):
            ids.append(str(row["_id"]))
            starts.append(start)
            where.append(f"{path}:{lineno}")
        if not ids:
            raise DataError(f"{path}: the corpus is empty")
        _check_unique(ids, where, str(path))
        offsets = np.array([*starts, path.stat().st_size], dtype=np.int64)
        with open(path, "rb") as f:  # by content: a copied or re-extracted corpus keeps its caches
            fingerprint = f"jsonl:{short_digest(hashlib.file_digest(f, 'sha256'))}"
        return cls(ids, [_JsonlRows(path, offsets)], fingerprint)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], source: str = "records") -> Corpus:
        """Wraps an in-memory sequence of {"_id", "title", "text"} rows (a list, or a Hub ``datasets.Dataset``)."""
        if len(records) == 0:
            raise DataError(f"{source}: the corpus is empty")
        columns = getattr(records, "column_names", None)
        if columns is not None:  # a datasets.Dataset: check columns once, read ids column-wise
            missing = [c for c in ("_id", "text") if c not in columns]
            if missing:
                raise DataError(f"{source}: the corpus has no {missing} column (columns: {columns})")
            ids = [str(i) for i in records["_id"]]
            fingerprint = f"dataset:{records._fingerprint}"
        else:
            digest = hashlib.sha256()
            for i, row in enumerate(records):
                for key in ("_id", "text"):
                    if key not in row:
                        raise DataError(f"{source}: row {i} has no {key!r} field (fields: {sorted(row)})")
                _check_fields(row, f"{source} row {i}")
                digest.update(json.dumps([row["_id"], row.get("title"), row["text"]]).encode())
            ids = [str(row["_id"]) for row in records]
            fingerprint = f"records:{short_digest(digest)}"
        _check_unique(ids, [f"{source} row {i}" for i in range(len(ids))], source)
        return cls(ids, [_RecordRows(records)], fingerprint)

    @classmethod
    def concatenate(cls, corpora: Sequence[Corpus], prefixes: Sequence[str]) -> Corpus:
        """One corpus holding all rows of ``corpora`` in order, with ids renamed ``"<prefix>/<id>"``."""
        ids = [document_key(prefix, doc_id) for corpus, prefix in zip(corpora, prefixes, strict=True)
               for doc_id in corpus.ids]
        if len(set(ids)) != len(ids):
            raise DataError(f"pooling {list(prefixes)} gives clashing '<name>/<id>' ids")
        parts = [part for corpus in corpora for part in corpus._parts]
        fingerprint = "pool:" + "|".join(f"{p}={c.fingerprint}" for c, p in zip(corpora, prefixes, strict=True))
        pool = cls(ids, parts, fingerprint)
        pool.components = list(corpora)
        return pool

    def __len__(self) -> int:
        return len(self.ids)

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids)

    def __contains__(self, doc_id: object) -> bool:
        return isinstance(doc_id, str) and self._rows([doc_id], missing_ok=True)[0] >= 0

    def __getitem__(self, doc_id: str) -> Document:
        return self.get_many([doc_id])[0]

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row numbers (m,) int64 of the given ids in file order; raises KeyError for an unknown id."""
        return self._rows(ids, missing_ok=False)

    def _rows(self, ids: Sequence[str], missing_ok: bool) -> np.ndarray:
        wanted = np.asarray(ids, dtype=str)
        pos = np.searchsorted(self._sorted_ids, wanted)
        pos_clipped = np.minimum(pos, len(self._sorted_ids) - 1)
        found = self._sorted_ids[pos_clipped] == wanted
        if not missing_ok and not found.all():
            raise KeyError(str(wanted[~found][0]))
        return np.where(found, self._order[pos_clipped], -1).astype(np.int64)

    def get_many(self, ids: Sequence[str]) -> list[Document]:
        """Documents {"title", "text"} of the given ids, in the given order."""
        return self.read_rows(self.rows_of(ids)) if len(ids) else []

    def read_rows(self, rows: np.ndarray) -> list[Document]:
        """Documents {"title", "text"} of row numbers (m,) (positions in ``ids``), in the given order."""
        rows = np.asarray(rows, dtype=np.int64)
        out: list[Document] = [{}] * len(rows)
        part_of = np.searchsorted(self._bounds, rows, side="right") - 1
        for p in np.unique(part_of):
            positions = np.flatnonzero(part_of == p)
            for pos, doc in zip(positions, self._parts[p].read(rows[positions] - self._bounds[p]), strict=True):
                out[pos] = doc
        return out

    def batches(self, size: int) -> Iterator[list[Document]]:
        """Documents in file order, ``size`` at a time (the last batch may be shorter)."""
        for start in range(0, len(self), size):
            yield self.read_rows(np.arange(start, min(start + size, len(self))))


def load_queries(path: str | os.PathLike) -> dict[str, str]:
    """Reads queries.jsonl into {query id: text}; raises DataError naming file:line for a bad, duplicate or empty
    row."""
    path = Path(path)
    queries: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, _, row in _iter_jsonl(path, ("_id", "text")):
        qid = str(row["_id"])
        if qid in queries:
            raise DataError(f"{path}:{lineno}: duplicate _id {qid!r} (first at line {first_line[qid]})")
        if not row["text"].strip():  # an error in training and evaluation alike: nothing to retrieve with
            raise DataError(f"{path}:{lineno}: query {qid!r} is empty")
        queries[qid] = row["text"]
        first_line[qid] = lineno
    return queries


def load_qrels(path: str | os.PathLike) -> Qrels:
    """Reads a BEIR qrels TSV (``query-id corpus-id score``, header line first) into {query id: {doc id: score}}.

    Raises DataError naming file:line for a row without exactly three tab-separated columns or a non-integer score,
    and for a file with no judgement at all.
    """
    path = Path(path)
    qrels: Qrels = {}
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:  # a byte-order mark at the start is read past, as the JSON files' is
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start} of the line)") from None
            if not line.strip():
                continue
            columns = line.split("\t")
            if lineno == 1 and columns[0] == "query-id":
                continue
            if len(columns) != 3:
                raise DataError(f"{path}:{lineno}: expected 3 tab-separated columns (query-id corpus-id score), "
                                f"got {len(columns)}: {line!r}")
            qid, doc_id, score = columns
            for an_id in (qid, doc_id):
                check_id(an_id, f"{path}:{lineno}")
            try:
                qrels.setdefault(qid, {})[doc_id] = int(score)
            except ValueError:
                raise DataError(f"{path}:{lineno}: score {score!r} is not an integer") from None
    if not qrels:
        raise DataError(f"{path}: the split is empty (no judgements)")
    return qrels


@dataclass
class Collection:
    """One split of a retrieval collection: the full corpus, the split's queries and their judgements."""

    name: str
    corpus: Corpus
    queries: dict[str, str]  # only the queries judged in ``qrels``
    qrels: Qrels


def check_qrels(qrels: Qrels, queries: Mapping[str, str], corpus: Corpus, source: str,
                on_unknown: Literal["raise", "skip"] = "raise") -> Qrels:
    """Returns ``qrels`` restricted to known query and doc ids.

    Unknown ids are reported with counts and examples: a DataError by default, a logged warning and a skip with
    ``on_unknown="skip"``. A query left without judgements is dropped (and counted); an empty result is an error.
    """
    unknown_queries = [q for q in qrels if q not in queries]
    judged_docs = {d for docs in qrels.values() for d in docs}
    doc_list = sorted(judged_docs)
    unknown_docs = {d for d, row in zip(doc_list, corpus._rows(doc_list, missing_ok=True), strict=True) if row < 0}
    if unknown_queries or unknown_docs:
        n_pairs = sum(1 for q, docs in qrels.items() for d in docs if q not in queries or d in unknown_docs)
        message = (f"{source}: {n_pairs} judgement(s) name unknown ids: {len(unknown_queries)} query id(s) not in "
                   f"the queries (e.g. {unknown_queries[:3]}), {len(unknown_docs)} doc id(s) not in the corpus "
                   f"(e.g. {sorted(unknown_docs)[:3]})")
        if on_unknown == "raise":
            raise DataError(message + "; fix the files, or drop them with on_unknown='skip' "
                            "(eval.py --on-unknown skip)")
        kept = {q: {d: s for d, s in docs.items() if d not in unknown_docs}
                for q, docs in qrels.items() if q in queries}
        emptied = [q for q, docs in kept.items() if not docs]
        logger.warning("%s; skipped them, and %d query(ies) left with no judgement", message, len(emptied))
        qrels = {q: docs for q, docs in kept.items() if docs}
        if not qrels:
            raise DataError(f"{source}: no judgement left after skipping unknown ids")
    return qrels


def load_corpus(path_or_hub_name: str | os.PathLike) -> Corpus:
    """A corpus alone: a corpus.jsonl file, a BEIR folder holding one, or a Hub name (its "corpus" config)."""
    path = Path(path_or_hub_name)
    if path.is_dir():
        if not (path / "corpus.jsonl").is_file():
            raise DataError(f"{path}: no corpus.jsonl (found: {sorted(p.name for p in path.iterdir())})")
        path = path / "corpus.jsonl"
    if path.is_file():
        return Corpus.from_jsonl(path)
    from datasets import load_dataset

    name = str(path_or_hub_name)
    return Corpus.from_records(load_dataset(name, "corpus", split="corpus"), source=name)


def load_collection(path_or_hub_name: str | os.PathLike, split: str,
                    on_unknown: Literal["raise", "skip"] = "raise") -> Collection:
    """Loads one split of a collection from a local BEIR folder or, if no such folder exists, from the Hub.

    The Collection's name is the folder's (or Hub repo's) last path component. See :func:`check_qrels` for
    ``on_unknown``.
    """
    path = Path(path_or_hub_name)
    if path.exists():
        return _load_local(path, split, on_unknown)
    return load_hub_collection(str(path_or_hub_name), split, on_unknown)


def _load_local(folder: Path, split: str, on_unknown: Literal["raise", "skip"]) -> Collection:
    for name in ("corpus.jsonl", "queries.jsonl", "qrels"):
        if not (folder / name).exists():
            found = sorted(p.name for p in folder.iterdir())
            raise DataError(f"{folder}: the collection has no {name} (found: {found})")
    _qrels_file(folder, split)  # a missing split fails before the corpus is read
    return load_split(folder, split, Corpus.from_jsonl(folder / "corpus.jsonl"), on_unknown)


def load_split(folder: str | os.PathLike, split: str, corpus: Corpus,
               on_unknown: Literal["raise", "skip"] = "raise") -> Collection:
    """Another split of a local collection whose ``corpus`` is already loaded (e.g. dev beside train): reads only
    the queries and that split's qrels."""
    folder = Path(folder)
    qrels_path = _qrels_file(folder, split)
    queries = load_queries(folder / "queries.jsonl")
    qrels = check_qrels(load_qrels(qrels_path), queries, corpus, str(qrels_path), on_unknown)
    return Collection(folder.name, corpus, {q: queries[q] for q in qrels}, qrels)


def load_other_split(source: str | os.PathLike, split: str, corpus: Corpus,
                     on_unknown: Literal["raise", "skip"] = "raise") -> Collection:
    """`split` of a collection whose `corpus` is already loaded (the dev split beside the training or test one): the
    local folder's queries and qrels read beside that corpus, or the whole split from the Hub for a Hub name. What
    train.py's dev scoring and eval.py's fusion weight both use."""
    if Path(source).exists():
        return load_split(source, split, corpus, on_unknown)
    return load_collection(source, split, on_unknown=on_unknown)


def _qrels_file(folder: Path, split: str) -> Path:
    qrels_path = folder / "qrels" / f"{split}.tsv"
    if not qrels_path.is_file():
        available = sorted(p.stem for p in (folder / "qrels").glob("*.tsv"))
        raise DataError(f"{qrels_path}: no split {split!r} in {folder} (available splits: {available})")
    return qrels_path


def load_hub_collection(name: str, split: str, on_unknown: Literal["raise", "skip"] = "raise",
                        cache_dir: str | None = None) -> Collection:
    """Loads BEIR's Hub layout through ``datasets``: ``name`` (configs corpus/queries) and ``name + "-qrels"``.

    ``name`` may also be a local folder laid out like those Hub repos (what the offline tests use); ``cache_dir``
    is datasets' cache (None: its default).
    """
    from datasets import load_dataset

    corpus = load_dataset(name, "corpus", split="corpus", cache_dir=cache_dir)
    queries = load_dataset(name, "queries", split="queries", cache_dir=cache_dir)
    try:
        qrels = load_dataset(name + "-qrels", split=split, cache_dir=cache_dir)
    except ValueError as e:  # datasets names the splits that exist
        raise DataError(f"{name}-qrels: no split {split!r} ({e})") from None
    return collection_from_tables(name.rstrip("/").split("/")[-1], corpus, queries, qrels, on_unknown)


def collection_from_tables(name: str, corpus: Sequence[Mapping[str, Any]], queries: Sequence[Mapping[str, Any]],
                           qrels: Sequence[Mapping[str, Any]], on_unknown: Literal["raise", "skip"] = "raise"
                           ) -> Collection:
    """Builds a Collection from BEIR's Hub tables (rows {"_id","title","text"}, {"_id","text"} and
    {"query-id","corpus-id","score"}); ``datasets.Dataset`` objects or lists of dicts."""
    query_text: dict[str, str] = {}
    for i, row in enumerate(queries):
        if "_id" not in row or "text" not in row:
            raise DataError(f"{name} queries: row {i} lacks '_id' or 'text' (fields: {sorted(row)})")
        query_text[str(row["_id"])] = row["text"]
    judgements: Qrels = {}
    for i, row in enumerate(qrels):
        if not {"query-id", "corpus-id", "score"} <= set(row):
            raise DataError(f"{name}-qrels: row {i} lacks query-id/corpus-id/score (fields: {sorted(row)})")
        judgements.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
    if not judgements:
        raise DataError(f"{name}-qrels: the split is empty (no judgements)")
    docs = Corpus.from_records(corpus, source=f"{name} corpus")
    judgements = check_qrels(judgements, query_text, docs, f"{name}-qrels", on_unknown)
    return Collection(name, docs, {q: query_text[q] for q in judgements}, judgements)


def pooled_collection(collections: Sequence[Collection]) -> Collection:
    """KILT-style pool: one corpus with every collection's documents, every collection's queries.

    Doc and query ids become ``"<collection name>/<id>"`` so they stay distinct across collections;
    :func:`split_pooled` maps a pooled run back to the collections.
    """
    names = [c.name for c in collections]
    if len(set(names)) != len(names):
        raise ValueError(f"pooled collections need distinct names, got {names}")
    corpus = Corpus.concatenate([c.corpus for c in collections], names)
    queries = {document_key(c.name, q): text for c in collections for q, text in c.queries.items()}
    qrels = {document_key(c.name, q): {document_key(c.name, d): s for d, s in docs.items()} for c in collections
             for q, docs in c.qrels.items()}
    return Collection("+".join(names), corpus, queries, qrels)


def split_pooled(pooled: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The entries of a pooled {query id: ...} mapping that belong to collection ``name``, keys kept as they are."""
    prefix = name + "/"
    return {q: v for q, v in pooled.items() if q.startswith(prefix)}


def document_key(collection: str, doc_id: str) -> str:
    """A document's (or query's) id among several collections: ``"<collection>/<id>"`` (pooled corpora, training
    batches, the passage table)."""
    return f"{collection}/{doc_id}"


def split_document_key(key: str) -> tuple[str, str]:
    """A :func:`document_key`'s collection and id."""
    collection, doc_id = key.split("/", 1)
    return collection, doc_id
