"""How search cost grows with the corpus: every index kind at 10^4, 10^5 and 10^6 vectors, and sharded encoding.

Vectors:
- real: all-MiniLM-L6-v2 FirstP vectors of every bbir passage (encoded once into the cache with encode.py's shards
  of 10,000 documents: `python encode.py --model sentence-transformers/all-MiniLM-L6-v2 --corpus <bbir>/<name>
  --shard-docs 10000`, or by this script when the cache lacks them);
- synthetic: n vectors of the model's dimension drawn around real passages (a real vector plus Gaussian noise of
  --noise per dimension, normalised), written as a memory-mapped shard store of 100,000 vectors a shard.
Queries are real bbir test queries (all-MiniLM-L6-v2), the same for every corpus.

For each corpus and index kind: build seconds, index bytes per vector (what a search holds in memory; flat streams
the vectors themselves), recall@10 and recall@100 against exact search over the same vectors, and queries/s (all
queries, k = 100, best of --rounds). Then an extrapolation to 10^7 and 10^8 vectors (formula in the table), and
sharded encoding of --encode-docs bbir passages by encode.py on 1 process (all threads) and 2 (one thread each).

    python bench/scale.py [--sizes 10000 100000 1000000] [--kinds flat ivf hnsw hnsw-ef512 hnsw-sq8 ivfpq
                          ivfpq-refine ivfpq-fs-refine opq] [--cache-dir D --shard-docs N]
                          [--queries 1000] [--threads 2] [--out docs/results/scale]
    python bench/scale.py --render docs/results/scale/scale.json     # the tables again from saved numbers
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyper_retrieval.core.backbones import resolve_backbone  # noqa: E402
from hyper_retrieval.core.fingerprints import passage_encoder_fingerprint  # noqa: E402
from hyper_retrieval.data.beir import load_collection  # noqa: E402
from hyper_retrieval.search.cache import _save_entry  # noqa: E402
from hyper_retrieval.search.corpus_encoder import CorpusEncoder  # noqa: E402
from hyper_retrieval.search.index import DenseIndex, exact_search, topk_overlap  # noqa: E402
from hyper_retrieval.search.searchers import ModelSearcher  # noqa: E402
from hyper_retrieval.search.shards import Shard, ShardStore, shard_ranges  # noqa: E402
from modeling_hyper import HyperRetrieverModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BBIR = REPO.parent / "shared" / "data" / "bbir"
COLLECTIONS = ("nq_ckc", "vitaminc", "quoref", "drop", "cosmosqa", "qasc", "squad_disflqa", "ropes", "multirc")
BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"
SHARD_DOCS = 10_000  # encode.py's --shard-docs for the cached real vectors


def index_settings(kind: str, n: int, dim: int) -> dict:
    """The settings each kind is measured with: IVF cells sqrt(n) (k-means stays affordable on 2 cores), an eighth
    of them probed (at least 16); PQ codes of dim / 4 bytes (8-bit: dim / 4 sub-quantisers; fast-scan 4-bit: dim / 2);
    HNSW with 32 links and efSearch 128 (512 for hnsw-ef512). flat streams the vectors through the CPU; flat-torch
    holds them on the GPU (float16) where there is one, else in memory."""
    nlist = max(1, int(np.sqrt(n)))
    ivf = {"nlist": nlist, "nprobe": max(16, nlist // 8)}
    return {"flat": {"kind": "flat", "backend": "faiss"},
            "flat-torch": {"kind": "flat", "backend": "torch"},
            "ivf": {"kind": "ivf", **ivf},
            "hnsw": {"kind": "hnsw", "hnsw_m": 32, "ef_search": 128},
            "hnsw-ef512": {"kind": "hnsw", "hnsw_m": 32, "ef_search": 512},
            "hnsw-sq8": {"kind": "hnsw-sq8", "hnsw_m": 32, "ef_search": 128},
            "ivfpq": {"kind": "ivfpq", "pq_m": dim // 4, **ivf},
            "ivfpq-refine": {"kind": "ivfpq", "pq_m": dim // 4, "refine_factor": 4, **ivf},
            "ivfpq-fs-refine": {"kind": "ivfpq-fs", "pq_m": dim // 2, "refine_factor": 4, **ivf},
            "ivfpq-fs-refine3": {"kind": "ivfpq-fs", "pq_m": dim // 2, "refine_factor": 3, **ivf},
            "opq": {"kind": "opq", "pq_m": dim // 4, **ivf}}[kind]


def real_vectors(model, names: list[str], cache_dir: Path, shard_docs: int, queries_wanted: int,
                 rng) -> tuple[ShardStore, np.ndarray]:
    """Every bbir passage's vector (one store, from the cache) and ``queries_wanted`` real test queries' vectors."""
    searcher = ModelSearcher(CorpusEncoder(model, passage_encoder_fingerprint(model), batch_size=64,
                                           cache_dir=cache_dir, show_progress=True, shard_docs=shard_docs))
    stores, counts, queries = [], [], []
    for name in names:
        collection = load_collection(BBIR / name, "test")
        store, hit = searcher.encoder.encode(collection.corpus)
        print(f"  {name}: {len(store)} vectors ({'cached' if hit else 'encoded now'})", flush=True)
        stores.append(store)
        counts.append(len(collection.corpus))
        queries += list(collection.queries.values())
    picked = rng.choice(len(queries), min(queries_wanted, len(queries)), replace=False)
    query_vectors = searcher.queries.encode([queries[i] for i in picked], None)[0]
    return ShardStore.concatenate(stores, counts), np.asarray(query_vectors, dtype=np.float32)


def synthetic_store(n: int, centres: np.ndarray, noise: float, folder: Path, rng) -> ShardStore:
    """n unit vectors around random real ones, written shard by shard (never all in memory)."""
    shards = []
    for i, (start, end) in enumerate(shard_ranges(n, 100_000)):
        x = centres[rng.integers(0, len(centres), end - start)] + noise * rng.standard_normal(
            (end - start, centres.shape[1]), dtype=np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        entry = folder / f"shard-{i:05d}.vectors"
        _save_entry(entry, {"synthetic": n, "shard": i}, {"vectors": x, "docs": np.arange(start, end)})
        shards.append(Shard(entry, np.arange(start, end)))
    return ShardStore(shards)


def measure(store: ShardStore, queries: np.ndarray, kind: str, exact: np.ndarray, rounds: int) -> dict:
    """One index kind over one store: build time, bytes per vector, recall@10/100 against exact, queries/s."""
    settings = index_settings(kind, len(store), store.dim)
    start = time.perf_counter()
    index = DenseIndex(store, **settings)
    build = time.perf_counter() - start
    best, found = float("inf"), None
    for _ in range(rounds):
        start = time.perf_counter()
        found = index.search(queries, 100)[1]
        best = min(best, time.perf_counter() - start)
    row = {"kind": kind, "settings": {k: v for k, v in settings.items() if k != "kind"}, "build_s": build,
           "bytes_per_vector": index.bytes_per_vector(), "recall@10": topk_overlap(found[:, :10], exact[:, :10]),
           "recall@100": topk_overlap(found, exact), "queries_per_s": len(queries) / best}
    print(f"  {kind:<13}{build:>9.1f} s{row['bytes_per_vector']:>10.1f} B/vec{row['recall@10']:>9.3f}"
          f"{row['recall@100']:>9.3f}{row['queries_per_s']:>11.0f} q/s", flush=True)
    return row


def sharded_encoding(model, docs: int, threads: int, folder: Path) -> list[dict]:
    """encode.py on --encode-docs passages of nq_ckc: 1 process with every thread, then 2 with one thread each (the
    same cores); wall-clock seconds (start-up included) and the encoding's own seconds, and whether the vectors
    agree."""
    corpus = folder / "corpus.jsonl"
    with open(BBIR / "nq_ckc" / "corpus.jsonl") as source, open(corpus, "w") as out:
        for _, line in zip(range(docs), source, strict=False):
            out.write(line)
    model.save_pretrained(folder / "model")
    results, stores = [], []
    for processes in (1, 2):
        cache = folder / f"cache-{processes}"
        env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads // processes)}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               str(REPO / "encode.py"), "--model", str(folder / "model"), "--corpus", str(corpus),
               "--cache-dir", str(cache), "--shard-docs", str(max(1, docs // 8)), "--no-progress"]
        start = time.perf_counter()
        run = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - start
        encode_s = max(float(line.rsplit(" in ", 1)[1].split()[0]) for line in run.stdout.splitlines()
                       if line.startswith("process "))
        entries = sorted(cache.glob("*.vectors"), key=lambda e: json.loads((e / "manifest.json").read_text())[
            "key"]["rows"])
        stores.append(np.concatenate([np.load(e / "vectors.npy") for e in entries]))
        results.append({"processes": processes, "threads_each": threads // processes, "wall_s": wall,
                        "encode_s": encode_s, "passages_per_s": docs / encode_s})
    results[1]["max_abs_diff_vs_1"] = float(np.abs(stores[0] - stores[1]).max())
    return results


def extrapolate(rows: list[dict], sizes: list[int]) -> list[dict]:
    """Per kind, with the settings of the largest measured size n2 kept (IVF cells, probes): build seconds and
    seconds per query as a + c n, the line through the two largest measured sizes (a training sample of fixed size
    plus a cost per vector; c >= 0); memory = bytes per vector at n2 times n."""
    out = []
    for kind in dict.fromkeys(r["kind"] for r in rows):
        by_n = {r["n"]: r for r in rows if r["kind"] == kind and r["data"] == "synthetic"}
        if len(by_n) < 2:
            continue
        n1, n2 = sorted(by_n)[-2:]
        lines = {}
        for name, value in (("build_s", lambda r: r["build_s"]), ("s_per_query", lambda r: 1 / r["queries_per_s"])):
            c = max(0.0, (value(by_n[n2]) - value(by_n[n1])) / (n2 - n1))
            lines[name] = (value(by_n[n2]) - c * n2, c)
        for n in sizes:
            a, c = lines["build_s"]
            a_q, c_q = lines["s_per_query"]
            out.append({"kind": kind, "n": n, "from": [n1, n2], "lines": lines,
                        "memory_gb": by_n[n2]["bytes_per_vector"] * n / 1e9, "build_s": a + c * n,
                        "queries_per_s": 1 / (a_q + c_q * n)})
    return out


def markdown(report: dict) -> str:
    lines = [f"Machine: {report['machine']}. Queries: {report['queries']} real bbir test queries, k = 100.", "",
             "| vectors | n | index | settings | build s | bytes/vector | x flat | recall@10 | recall@100 "
             "| queries/s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        flat = 4 * report["dim"]
        settings = ", ".join(f"{k} {v}" for k, v in r["settings"].items() if k != "backend") or "exact"
        lines.append(f"| {r['data']} | {r['n']:,} | {r['kind']} | {settings} | {r['build_s']:.1f} | "
                     f"{r['bytes_per_vector']:.0f} | {r['bytes_per_vector'] / flat:.3f} | {r['recall@10']:.3f} | "
                     f"{r['recall@100']:.3f} | {r['queries_per_s']:.0f} |")
    if report["extrapolation"]:
        n1, n2 = report["extrapolation"][0]["from"]
        lines += ["", f"Extrapolation from the synthetic rows at {n1:,} and {n2:,} vectors, the {n2:,} settings kept: "
                  "build seconds and seconds per query as a + c n, the line through those two sizes (c >= 0); "
                  "memory = bytes per vector x n.", "",
                  "| index | n | memory GB | build s | queries/s | build: a s + c s/vector | query: a s + c s/vector |",
                  "|---|---:|---:|---:|---:|---|---|"]
        for e in report["extrapolation"]:
            (a, c), (a_q, c_q) = e["lines"]["build_s"], e["lines"]["s_per_query"]
            lines.append(f"| {e['kind']} | {e['n']:.0e} | {e['memory_gb']:.1f} | {e['build_s']:.0f} | "
                         f"{e['queries_per_s']:.2f} | {a:.1f} + {c:.2e} | {a_q:.2e} + {c_q:.2e} |")
    if report["sharded_encoding"]:
        lines += ["", f"Sharded encoding (encode.py, {report['encode_docs']} nq_ckc passages, 256 tokens):", "",
                  "| processes | threads each | encode s | passages/s | wall s (with start-up) |",
                  "|---:|---:|---:|---:|---:|"]
        for e in report["sharded_encoding"]:
            lines.append(f"| {e['processes']} | {e['threads_each']} | {e['encode_s']:.1f} | "
                         f"{e['passages_per_s']:.1f} | {e['wall_s']:.1f} |")
        lines.append(f"\nLargest difference between the two runs' vectors: "
                     f"{report['sharded_encoding'][1]['max_abs_diff_vs_1']:.2e}.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw", "hnsw-ef512", "hnsw-sq8", "ivfpq",
                                                       "ivfpq-refine", "ivfpq-fs-refine", "ivfpq-fs-refine3", "opq"])
    parser.add_argument("--skip", nargs="*", default=[], metavar="KIND@N", help="e.g. hnsw@1000000")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--collections", nargs="+", default=list(COLLECTIONS), help="bbir collections (real vectors)")
    parser.add_argument("--noise", type=float, default=0.03, help="synthetic: noise per dimension around a real vector")
    parser.add_argument("--rounds", type=int, default=2, help="searches timed per index (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--encode-docs", type=int, default=800, help="passages for the sharded encoding (0: skip)")
    parser.add_argument("--extrapolate", type=int, nargs="*", default=[10**7, 10**8])
    parser.add_argument("--backbone", default=resolve_backbone(BACKBONE), help="MiniLM weights (folder or Hub id)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "results" / "scale")
    parser.add_argument("--cache-dir", type=Path, default=REPO / "outputs" / "embedding_cache",
                        help="the corpus-vector cache holding (or receiving) the real bbir vectors")
    parser.add_argument("--shard-docs", type=int, default=SHARD_DOCS,
                        help="the shards of the cached real vectors (eval.py's default is 50000)")
    parser.add_argument("--work", type=Path, default=None, help="where synthetic stores are written (default: a "
                                                               "temporary folder, removed after)")
    parser.add_argument("--render", type=Path, metavar="SCALE_JSON",
                        help="only write scale.md (and the extrapolation) again from a saved scale.json")
    args = parser.parse_args()
    if args.render:
        report = json.loads(args.render.read_text())
        report["extrapolation"] = extrapolate(report["rows"], args.extrapolate)
        args.render.write_text(json.dumps(report, indent=1))
        (args.render.parent / "scale.md").write_text(markdown(report))
        print(markdown(report))
        return
    from hyper_retrieval.search.index import faiss

    torch.set_num_threads(args.threads)
    if faiss is not None:  # the GPU image has none: flat and flat-torch need none
        faiss.omp_set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="scale-", dir=args.work))
    args.out.mkdir(parents=True, exist_ok=True)
    model = HyperRetrieverModel.from_backbone(args.backbone).to(device).eval()
    print("real bbir vectors:", flush=True)
    real, queries = real_vectors(model, args.collections, args.cache_dir, args.shard_docs, args.queries, rng)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} "
                         f"threads, torch {torch.__version__}, faiss {faiss.__version__ if faiss else 'none'}"
                         + (f", {torch.cuda.get_device_name()}" if device == "cuda" else ""),
              "queries": len(queries), "dim": real.dim, "noise": args.noise, "rows": [], "sharded_encoding": [],
              "encode_docs": args.encode_docs}
    centres = real.load()
    corpora = [("real bbir", real)] + [(f"synthetic@{n}", None) for n in args.sizes]
    for label, store in corpora:
        data, n = ("real", len(real)) if store is not None else ("synthetic", int(label.split("@")[1]))
        if store is None:
            store = synthetic_store(n, centres, args.noise, work / label, rng)
        start = time.perf_counter()
        exact = exact_search(store, queries, 100, device=device)[1]
        print(f"{data} {n:,} vectors (exact top-100 of {len(queries)} queries in {time.perf_counter() - start:.1f} s)"
              f"\n  {'index':<13}{'build':>11}{'bytes':>15}{'R@10':>9}{'R@100':>9}{'queries/s':>15}", flush=True)
        for kind in args.kinds:
            if f"{kind}@{n}" in args.skip:
                continue
            report["rows"].append({"data": data, "n": n, **measure(store, queries, kind, exact, args.rounds)})
            (args.out / "scale.json").write_text(json.dumps(report, indent=1))  # kept as each row finishes
        if data == "synthetic":
            shutil.rmtree(work / label, ignore_errors=True)
    report["extrapolation"] = extrapolate(report["rows"], args.extrapolate)
    if args.encode_docs:
        report["sharded_encoding"] = sharded_encoding(model, args.encode_docs, args.threads, work)
    shutil.rmtree(work, ignore_errors=True)
    (args.out / "scale.json").write_text(json.dumps(report, indent=1))
    (args.out / "scale.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
