"""Cost of reading long passages whole: MaxP windows against FirstP, per bbir collection, in the same run.

For each collection, the same sample of passages is encoded both ways with all-MiniLM-L6-v2 (256-token windows,
stride half a window) and the collection's test queries search both indexes (exact, documents returned, never
windows). Timings interleave FirstP and MaxP over several rounds and keep each one's best, so a slow moment hits
both alike. Printed per collection: windows per passage, passages/s, index size and queries/s, with MaxP's ratio
to FirstP.

    python bench/windows.py [--passages 400] [--queries 300] [--rounds 2] [--threads 2] [--json cost.json]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyper_retrieval.data.beir import load_collection  # noqa: E402
from hyper_retrieval.search.index import DenseIndex, top_documents  # noqa: E402
from modeling_hyper import HyperRetrieverModel  # noqa: E402

BBIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbir"
COLLECTIONS = ("nq_ckc", "vitaminc", "quoref", "drop", "cosmosqa", "qasc", "squad_disflqa", "ropes", "multirc")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=400, help="passages sampled per collection")
    parser.add_argument("--queries", type=int, default=300, help="test queries per collection")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS))
    parser.add_argument("--json", type=Path, help="also write the table here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = HyperRetrieverModel.from_backbone("sentence-transformers/all-MiniLM-L6-v2",
                                              max_seq_length=256).eval()
    rng = np.random.default_rng(0)
    rows = {}
    for name in args.collections:
        collection = load_collection(BBIR / name, "test")
        picked = np.sort(rng.choice(len(collection.corpus), min(args.passages, len(collection.corpus)), replace=False))
        docs = collection.corpus.read_rows(picked)
        queries = list(collection.queries.values())[: args.queries]
        query_vectors = model.encode_queries(queries, batch_size=args.batch_size)
        stores = {mode: model.tokenize_windows(docs, first_only=mode == "first") for mode in ("first", "max")}
        encode_s, search_s, vectors = dict.fromkeys(stores, float("inf")), dict.fromkeys(stores, float("inf")), {}
        for _ in range(args.rounds):
            for mode, (ids, offsets, window_doc) in stores.items():
                start = time.perf_counter()
                vectors[mode] = model.encode_tokenized(ids, offsets, False, args.batch_size)[0]
                encode_s[mode] = min(encode_s[mode], time.perf_counter() - start)
                start = time.perf_counter()
                top_documents(DenseIndex(vectors[mode]).search, query_vectors, 100, window_doc)
                search_s[mode] = min(search_s[mode], time.perf_counter() - start)
        rows[name] = {mode: {"windows_per_passage": len(stores[mode][2]) / len(docs),
                             "passages_per_s": len(docs) / encode_s[mode],
                             "index_mb_per_1k_passages": vectors[mode].nbytes / len(docs) * 1000 / 2**20,
                             "queries_per_s": len(queries) / search_s[mode]} for mode in stores}
        first, maxp = rows[name]["first"], rows[name]["max"]
        print(f"{name:<14} windows/passage {maxp['windows_per_passage']:.2f}  passages/s {first['passages_per_s']:.1f}"
              f" -> {maxp['passages_per_s']:.1f} ({maxp['passages_per_s'] / first['passages_per_s']:.2f}x)  "
              f"search q/s {first['queries_per_s']:.0f} -> {maxp['queries_per_s']:.0f}", flush=True)
    facts = {"passages": args.passages, "queries": args.queries, "rounds": args.rounds, "threads": args.threads,
             "batch_size": args.batch_size, "collections": rows}
    if args.json:
        args.json.write_text(json.dumps(facts, indent=1))


if __name__ == "__main__":
    main()
