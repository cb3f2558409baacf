"""Corpus encoding and search throughput: our encode_corpus against sentence-transformers, then the DenseIndex.

One run, the same all-MiniLM-L6-v2 weights, the same real bbir passages (evenly spaced over the nine corpora), the same
max length and batch size. Encoding systems:
- sentence-transformers `SentenceTransformer.encode` (the reference, ratio 1.0), and again in --also-dtype (the
  anchor of our model in that dtype: on a GPU `--also-dtype float32` gives both float32 and bf16 anchors);
- our `HyperRetrieverModel.encode_corpus` (cold: tokenization included; batches sorted by token count; on a GPU the
  batches are padded ahead in a thread, copied asynchronously, and embeddings stay on the device until the end);
- our `encode_tokenized` from the corpus's token ids cached on disk (memory-mapped, as eval.py keeps them), as a
  corpus re-encoded after each training run would be;
- tokenization alone, per batch (sentence-transformers' way) and over the whole list (`HyperRetrieverModel.tokenize`).
The passages are cut into --rounds interleaved slices; every system encodes every slice, in rotating order, and its
rate is all passages over its summed time, so a slow moment of the machine hits all systems alike; "median round
vs ST" is the median over rounds of its rate over sentence-transformers' rate in the same round. "cos" is the
worst cosine between a system's embedding and sentence-transformers' for the same passage.

Search: the encoded passages indexed by DenseIndex (flat, and the approximate hnsw / ivf with their recall@k against
the exact search), searched by --queries encoded bbir test queries; best of --search-rounds.

Device auto: CUDA if available, with bf16 weights for every system (SDPA attention); --compile compiles our model
(torch.compile, dynamic shapes).

    python bench/eval.py [--passages 2000] [--queries 1000] [--batch-size 32] [--max-length 256] [--rounds 8]
                         [--threads 2] [--device auto|cpu|cuda] [--dtype auto|float32|bfloat16]
                         [--also-dtype bfloat16|float32|none] [--compile] [--k 100]
    python bench/eval.py --passages 40000 --batch-size 256    # on a GPU
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyper_retrieval.core.backbones import resolve_backbone  # noqa: E402
from hyper_retrieval.core.precision import resolve_dtype  # noqa: E402
from hyper_retrieval.search.cache import cached_arrays  # noqa: E402
from hyper_retrieval.search.index import DenseIndex  # noqa: E402
from modeling_hyper import HyperRetrieverModel  # noqa: E402

BBIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbir"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # the pip-shipped copy when installed (requirements-weights.txt)
COLLECTIONS = ("nq_ckc", "vitaminc", "quoref", "drop", "cosmosqa", "qasc", "squad_disflqa", "ropes", "multirc")


# ----------------------------------------------------------------------------------------------------- data
def load_passages(n: int) -> list[dict]:
    """n passages evenly spaced over the nine bbir corpora read back to back (all of them when n >= their total)."""
    docs = []
    for name in COLLECTIONS:
        with open(BBIR / name / "corpus.jsonl") as f:
            docs += [json.loads(line) for line in f]
    if n >= len(docs):
        return docs
    return [docs[i] for i in np.linspace(0, len(docs) - 1, n).round().astype(int)]


def load_queries(n: int) -> list[str]:
    """n bbir test queries, taken in turn from the nine collections."""
    per = []
    for name in COLLECTIONS:
        with open(BBIR / name / "qrels" / "test.tsv") as f:
            wanted = {line.split("\t")[0] for line in itertools.islice(f, 1, n + 1)}
        with open(BBIR / name / "queries.jsonl") as f:
            per.append([q["text"] for q in map(json.loads, f) if q["_id"] in wanted])
    mixed = [q for group in itertools.zip_longest(*per) for q in group if q is not None]
    return mixed[:n]


# ----------------------------------------------------------------------------------------------------- timing
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def min_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The worst cosine between matching rows of a and b."""
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return float((a * b).sum(1).min())


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=8, help="interleaved slices of the passages")
    parser.add_argument("--search-rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto",
                        help="our model's and sentence-transformers' weights; auto: bfloat16 where it computes faster "
                             "(hyper_retrieval/core/precision.py), else float32")
    parser.add_argument("--also-dtype", choices=("bfloat16", "float32", "none"), default="bfloat16",
                        help="also encode with a copy of our model whose weights are in this dtype (eval.py --dtype): "
                             "its passages/s and cosines beside the others, and its queries' worst cosine")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model (dynamic shapes)")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--backbone", default=resolve_backbone(MINILM), help="MiniLM weights (folder or Hub id)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from hyper_retrieval.search.index import faiss
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = getattr(torch, resolve_dtype(args.dtype, device))
    backbone = args.backbone
    if faiss is not None:
        faiss.omp_set_num_threads(args.threads)

    docs = load_passages(args.passages)
    reference = SentenceTransformer(backbone, device=str(device))
    reference.max_seq_length = args.max_length
    reference.to(dtype)
    model = HyperRetrieverModel.from_backbone(backbone, max_seq_length=args.max_length).to(device, dtype).eval()
    other_dtype = getattr(torch, args.also_dtype) if args.also_dtype != "none" else dtype
    other = other_reference = None
    if other_dtype != dtype:  # both models in the other dtype too: sentence-transformers is its anchor there
        other = HyperRetrieverModel.from_backbone(backbone, max_seq_length=args.max_length).to(device, other_dtype)
        other.eval()
        other_reference = SentenceTransformer(backbone, device=str(device))
        other_reference.max_seq_length = args.max_length
        other_reference.to(other_dtype)
    if args.compile:
        model.compile(dynamic=True)
    tokenizer = model.tokenizer
    texts = model.passage_texts(docs)  # what encode_corpus encodes, given to sentence-transformers too

    cache_dir = Path(tempfile.mkdtemp(prefix="bench-token-cache-"))
    start = time.perf_counter()
    store = cached_arrays(cache_dir, {"bench": len(docs)},
                          lambda: dict(zip(("ids", "offsets"), model.tokenize(texts), strict=True)))[0]
    offsets = store["offsets"]
    cache_build = time.perf_counter() - start
    lengths = np.diff(offsets)

    slices = [np.arange(r, len(docs), args.rounds) for r in range(args.rounds)]

    def run_reference(rows):
        return reference.encode([texts[i] for i in rows], batch_size=args.batch_size, convert_to_numpy=True)

    def run_ours(rows):
        return model.encode_corpus([docs[i] for i in rows], batch_size=args.batch_size)

    def run_cached(rows):
        # reopened each time, as a new run would; the rows' slice of the memory-mapped store
        store = cached_arrays(cache_dir, {"bench": len(docs)}, dict)[0]
        store_ids, store_offsets = store["ids"], store["offsets"]
        starts, ends = store_offsets[rows], store_offsets[rows + 1]
        sub_ids = np.concatenate([store_ids[a:b] for a, b in zip(starts, ends, strict=True)])
        sub_offsets = np.concatenate([[0], np.cumsum(ends - starts)])
        return model.encode_tokenized(sub_ids, sub_offsets, False, args.batch_size)[0]

    def run_tokenize_batches(rows):
        sub = [texts[i] for i in rows]
        order = np.argsort([-len(t) for t in sub], kind="stable")
        for s in range(0, len(sub), args.batch_size):
            tokenizer([sub[i] for i in order[s : s + args.batch_size]], padding=True, truncation=True,
                      max_length=args.max_length, return_tensors="pt")

    def run_tokenize_all(rows):
        model.tokenize([texts[i] for i in rows])

    systems: dict[str, Callable] = {
        "sentence-transformers encode (cold)": run_reference,
        "encode_corpus (cold)": run_ours,
        "encode_tokenized, cached token ids (memmap)": run_cached,
        **({f"encode_corpus (cold), {args.also_dtype}": lambda rows: other.encode_corpus([docs[i] for i in rows],
                                                                                        batch_size=args.batch_size),
            f"sentence-transformers encode (cold), {args.also_dtype}": lambda rows: other_reference.encode(
                [texts[i] for i in rows], batch_size=args.batch_size, convert_to_numpy=True)}
           if other is not None else {}),
        "tokenize only, per batch (as ST does)": run_tokenize_batches,
        "tokenize only, whole list at once": run_tokenize_all,
    }
    warm = slices[0][: 4 * args.batch_size]
    for run in systems.values():  # warm-up (and compilation)
        run(warm)
    sync(device)
    load_before = load_average()
    seconds = dict.fromkeys(systems, 0.0)
    per_round = {name: [] for name in systems}
    outputs = {name: np.zeros((len(docs), 0)) for name in systems}
    embeddings = {name: [] for name in systems}
    for r, rows in enumerate(slices):
        names = list(systems)
        for name in names[r % len(names):] + names[: r % len(names)]:
            sync(device)
            start = time.perf_counter()
            out = systems[name](rows)
            sync(device)
            elapsed = time.perf_counter() - start
            seconds[name] += elapsed
            per_round[name].append(len(rows) / elapsed)
            if out is not None:
                embeddings[name].append((rows, out))
    load_after = load_average()
    shutil.rmtree(cache_dir, ignore_errors=True)
    for name, parts in embeddings.items():
        if parts:
            full = np.zeros((len(docs), parts[0][1].shape[1]), dtype=np.float32)
            for rows, out in parts:
                full[rows] = out
            outputs[name] = full

    ref_name = "sentence-transformers encode (cold)"
    ref_rate = len(docs) / seconds[ref_name]
    ref_emb = outputs[ref_name]
    cut = (lengths >= args.max_length).mean()
    print(f"{len(docs)} bbir passages ({lengths.mean():.1f} tokens on average, {cut:.1%} cut at {args.max_length}), "
          f"batch {args.batch_size}, {device.type} {str(dtype).removeprefix('torch.')}, "
          f"{args.threads} threads{', compiled' if args.compile else ''}, {args.rounds} interleaved rounds")
    print(f"load average before {load_before}, after {load_after}; token cache built in {cache_build:.2f} s")
    print(f"{'system':<46}{'passages/s':>12}{'vs ST':>8}{'median round vs ST':>20}{'rounds min..max':>17}"
          f"{'min cos vs ST':>15}")
    for name in systems:
        rate = len(docs) / seconds[name]
        round_ratio = statistics.median(a / b for a, b in zip(per_round[name], per_round[ref_name], strict=True))
        spread = f"{min(per_round[name]):.0f}..{max(per_round[name]):.0f}"
        cos = "" if outputs[name].shape[1] == 0 else f"{min_cosine(outputs[name], ref_emb):.6f}"
        print(f"{name:<46}{rate:>12.1f}{rate / ref_rate:>8.3f}{round_ratio:>20.3f}{spread:>17}{cos:>15}")
    if other is not None:
        ours, theirs = (seconds[f"{system}, {args.also_dtype}"] for system in ("encode_corpus (cold)",
                                                                             "sentence-transformers encode (cold)"))
        print(f"in {args.also_dtype}: encode_corpus (cold) {theirs / ours:.3f}x sentence-transformers there")

    # ------------------------------------------------------------------------------------------------- search
    queries = load_queries(args.queries)
    start = time.perf_counter()
    query_emb = model.encode_queries(queries, batch_size=args.batch_size)
    query_rate = len(queries) / (time.perf_counter() - start)
    if other is not None:
        ours = f"encode_corpus (cold), {args.also_dtype}"
        print(f"{args.also_dtype} against {str(dtype).removeprefix('torch.')}, our model: worst cosine "
              f"{min_cosine(other.encode_queries(queries, batch_size=args.batch_size), query_emb):.6f} over "
              f"{len(queries)} queries, {min_cosine(outputs[ours], outputs['encode_corpus (cold)']):.6f} over "
              f"{len(docs)} passages")
    corpus_emb = outputs["encode_corpus (cold)"]
    k = min(args.k, len(docs))
    exact = DenseIndex(corpus_emb, kind="flat", backend="faiss").search(query_emb, k)[1]
    indexes = {
        "flat (backend auto)": {"kind": "flat", "backend": "auto"},
        "flat faiss": {"kind": "flat", "backend": "faiss"},
        "flat torch": {"kind": "flat", "backend": "torch"},
    }
    if faiss is not None:  # the GPU image has none: the exact kinds above need none
        indexes |= {"hnsw faiss (M 32, ef 256)": {"kind": "hnsw", "backend": "faiss"},
                    "ivf faiss (nprobe 32)": {"kind": "ivf", "backend": "faiss"}}
    from hyper_retrieval.search.index import topk_overlap

    print()
    print(f"search: {len(queries)} bbir test queries (encode_queries {query_rate:.1f} queries/s) over the {len(docs)} "
          f"encoded passages, top {k}, best of {args.search_rounds}; load average {load_average()}")
    print(f"{'index':<30}{'build s':>10}{'queries/s':>14}{f'recall@{k}':>12}")
    for name, settings in indexes.items():
        start = time.perf_counter()
        index = DenseIndex(corpus_emb, **settings)
        build = time.perf_counter() - start
        best = float("inf")
        for _ in range(args.search_rounds):
            sync(device)
            start = time.perf_counter()
            found = index.search(query_emb, k)[1]
            sync(device)
            best = min(best, time.perf_counter() - start)
        label = f"{name} [{index.backend}]" if settings["backend"] == "auto" else name
        print(f"{label:<30}{build:>10.3f}{len(queries) / best:>14.1f}{topk_overlap(found, exact):>12.4f}")


if __name__ == "__main__":
    main()
