"""Builds the quickstart sample (data/sample/) from ../shared/data/bbir: a few hundred queries per split and a
corpus of their gold passages plus random distractors, in the same BEIR layout. Deterministic.

    python scripts/make_sample.py [--source ../shared/data/bbir] [--out data/sample]

Collections chosen for their licences (CC BY / CC BY-SA, recorded in each meta.json).
"""

import argparse
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SIZES = {"train": 300, "dev": 50, "test": 100}
COLLECTIONS = ["qasc", "vitaminc", "cosmosqa", "ropes"]
DISTRACTORS = 400


def read_qrels(path: Path) -> dict[str, list[tuple[str, str]]]:
    by_query: dict[str, list[tuple[str, str]]] = {}
    lines = path.read_text().splitlines()[1:]
    for line in lines:
        qid, did, score = line.split("\t")
        by_query.setdefault(qid, []).append((did, score))
    return by_query


def sample_collection(source: Path, out: Path, rng: random.Random) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "qrels").mkdir(exist_ok=True)
    kept_queries, kept_docs = set(), set()
    for split, n in SIZES.items():
        qrels = read_qrels(source / "qrels" / f"{split}.tsv")
        chosen = sorted(rng.sample(sorted(qrels), min(n, len(qrels))))
        with open(out / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for qid in chosen:
                for did, score in qrels[qid]:
                    f.write(f"{qid}\t{did}\t{score}\n")
                    kept_docs.add(did)
        kept_queries.update(chosen)
    corpus = [json.loads(line) for line in open(source / "corpus.jsonl")]
    others = [d["_id"] for d in corpus if d["_id"] not in kept_docs]
    kept_docs.update(rng.sample(others, min(DISTRACTORS, len(others))))
    with open(out / "corpus.jsonl", "w") as f:
        for doc in corpus:
            if doc["_id"] in kept_docs:
                f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    with open(source / "queries.jsonl") as src, open(out / "queries.jsonl", "w") as f:
        for line in src:
            if json.loads(line)["_id"] in kept_queries:
                f.write(line)
    meta = json.loads((source / "meta.json").read_text())
    meta["sample"] = f"bbir/{source.name} sampled by scripts/make_sample.py: {SIZES}, {DISTRACTORS} distractors"
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return {"docs": len(kept_docs), "queries": len(kept_queries)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "bbir")
    parser.add_argument("--out", type=Path, default=REPO / "data" / "sample")
    args = parser.parse_args()
    for name in COLLECTIONS:
        print(name, sample_collection(args.source / name, args.out / name, random.Random(f"sample-{name}")))


if __name__ == "__main__":
    main()
