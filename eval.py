"""Evaluate a retriever (a saved model, a Hub id, or bm25) on BEIR-format collections; compare saved evaluations.

    python eval.py --model outputs/hyper --data ../shared/data/bbir/nq_ckc ../shared/data/bbir/qasc \
        --zero-shot ../shared/data/bbir/ropes --split test --out outputs/eval/hyper
    python eval.py --model bm25 --data ../shared/data/bbir/ropes --out outputs/eval/bm25
    python eval.py --config configs/eval.yaml [--any-option value]
    python eval.py --compare outputs/eval/bm25 outputs/eval/hyper --out outputs/eval/compare

Writes results.json, results.md, per_query.json and runs/<collection>.trec to --out (plus attention.npy,
attention_tasks.json and the attention plots for a hyper-prompt model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hyper_retrieval.beir import load_collection
from hyper_retrieval.embedding_cache import WEIGHT_PATTERNS, passage_encoder_fingerprint, path_fingerprint
from hyper_retrieval.evaluation import BM25Searcher, ModelSearcher, evaluate_collections
from hyper_retrieval.plots import plot_attention_heatmap, plot_attention_projection, plot_collection_bars
from hyper_retrieval.results import (
    build_results,
    check_output_dir,
    compare_markdown,
    load_results,
    metric_by_collection,
    run_label,
    write_results,
)
from hyper_retrieval.routing import routing_by_collection


def load_retriever(name_or_path: str, dtype: str = "auto", compile_model: bool = False) -> Any:
    """The model behind ``--model``: a local folder (which must hold weights) or a Hub id, through AutoModel, on the
    GPU when there is one; dtype "auto" is bfloat16 there and float32 on the CPU."""
    import torch
    from transformers import AutoModel

    folder = Path(name_or_path)
    if folder.is_dir() and not any(any(folder.glob(p)) for p in WEIGHT_PATTERNS):
        raise FileNotFoundError(f"model folder {folder} has no weights (no {', '.join(WEIGHT_PATTERNS)} file; "
                                f"found: {sorted(p.name for p in folder.iterdir())})")
    model = AutoModel.from_pretrained(name_or_path, trust_remote_code=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device == "cuda" else "float32"
    model = model.to(device, getattr(torch, dtype)).eval()
    if compile_model:
        model.compile(dynamic=True)
    return model


def prompt_attention(searcher: Any, collections: list) -> np.ndarray | None:
    """Every collection's queries' attention over the prompt pool (n, N), in collection order; None without a pool
    of more than one prompt."""
    if not isinstance(searcher, ModelSearcher):
        return None
    attention = [searcher.prompt_attention(list(c.queries.values())) for c in collections]
    if any(a is None for a in attention) or attention[0].shape[1] < 2:
        return None
    return np.concatenate(attention)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line, with defaults taken from --config (a YAML mapping of option names) when given."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of options (keys as the long options, '-' or '_')")
    parser.add_argument("--model", help="model folder, Hub id, or 'bm25'")
    parser.add_argument("--data", nargs="+", default=[], help="collection folders or Hub names (in-domain)")
    parser.add_argument("--zero-shot", nargs="*", default=[],
                        help="collections never trained on: names of --data entries, or further folders/Hub names")
    parser.add_argument("--split", default="test")
    parser.add_argument("--pooled", action="store_true", help="one index over all corpora (KILT style)")
    parser.add_argument("--out", help="output folder (default outputs/eval/<model name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace results of a different evaluation in --out")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=None, help="passed to the encoders if they accept it")
    parser.add_argument("--index", choices=["flat", "ivf", "hnsw"], default="flat")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="model weights: auto is bfloat16 on a GPU, float32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes)")
    parser.add_argument("--k", type=int, default=100, help="documents retrieved per query")
    parser.add_argument("--prune-query-terms", type=int, default=None, help="sparse models: keep the top-K terms")
    parser.add_argument("--bm25-k1", type=float, default=0.9)
    parser.add_argument("--bm25-b", type=float, default=0.4)
    parser.add_argument("--cache-dir", default="outputs/embedding_cache", help="corpus embedding cache ('' for none)")
    parser.add_argument("--on-unknown", choices=["raise", "skip"], default="raise",
                        help="qrels naming unknown ids: fail (default) or skip them with a warning")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="output folders (or results.json) to compare")
    parser.add_argument("--metric", default="ndcg@10", help="metric of the --compare table and chart")
    args = parser.parse_args(argv)
    if args.config:
        options = yaml.safe_load(Path(args.config).read_text()) or {}
        known = {a.dest for a in parser._actions}
        unknown = sorted(k for k in options if k.replace("-", "_") not in known)
        if unknown:
            parser.error(f"{args.config}: unknown option(s) {unknown}")
        parser.set_defaults(**{k.replace("-", "_"): v for k, v in options.items()})
        args = parser.parse_args(argv)
    if not args.compare and (not args.model or not (args.data or args.zero_shot)):
        parser.error("--model and --data (or --zero-shot) are required, unless --compare is given")
    return args


def compare(runs: list[str], out: Path, metric: str) -> None:
    """Side-by-side Markdown table and bar chart of saved evaluations."""
    results = {run_label(r): load_results(r) for r in runs}
    out.mkdir(parents=True, exist_ok=True)
    table = compare_markdown(results, metric)
    (out / "compare.md").write_text(table)
    plot_collection_bars({name: metric_by_collection(r, metric) for name, r in results.items()},
                         out / f"compare_{metric.replace('@', '_at_')}.png", metric=metric)
    print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.compare:
        compare(args.compare, Path(args.out or "outputs/eval/compare"), args.metric)
        return

    # What is evaluated: --data entries are in-domain; --zero-shot names some of them or adds collections.
    data_names = {Path(d).name: d for d in args.data}
    sources = list(args.data) + [z for z in args.zero_shot if Path(z).name not in data_names]
    zero_shot = {Path(z).name for z in args.zero_shot}
    is_bm25 = args.model == "bm25"
    settings = {"model": args.model, "data": [str(Path(s).resolve()) if Path(s).exists() else s for s in sources],
                "zero_shot": sorted(zero_shot), "split": args.split, "pooled": args.pooled, "k": args.k}
    settings |= ({"bm25_k1": args.bm25_k1, "bm25_b": args.bm25_b} if is_bm25 else
                 {"model_fingerprint": path_fingerprint(args.model), "index": args.index, "dtype": args.dtype,
                  "max_length": args.max_length, "prune_query_terms": args.prune_query_terms})
    out = Path(args.out or Path("outputs/eval") / Path(args.model).name)
    check_output_dir(out, settings, args.overwrite)

    collections = [load_collection(s, args.split, on_unknown=args.on_unknown) for s in sources]
    progress = not args.no_progress
    if is_bm25:
        searcher = BM25Searcher(args.bm25_k1, args.bm25_b, progress)
    else:
        model = load_retriever(args.model, args.dtype, args.compile)
        # Corpus embeddings are cached under what computes them: the passage encoder, when the model says which.
        cache_fingerprint = passage_encoder_fingerprint(model) or settings["model_fingerprint"]
        searcher = ModelSearcher(model, cache_fingerprint, args.batch_size,
                                 args.max_length, args.index, args.prune_query_terms,
                                 Path(args.cache_dir) if args.cache_dir else None, progress)

    collection_results = evaluate_collections(searcher, collections, zero_shot, args.k, args.pooled)
    results = build_results(settings, collection_results)
    # A hyper-prompt model also shows how its queries attend over the prompt pool, per task.
    attention = prompt_attention(searcher, collections)
    if attention is not None:
        labels = [c.name for c in collections for _ in range(len(c.queries))]
        results["routing"] = routing_by_collection(attention, labels, zero_shot)
    write_results(out, results, collection_results)
    plot_collection_bars({args.model: metric_by_collection(results)}, out / "ndcg_at_10.png")
    if attention is not None:
        np.save(out / "attention.npy", attention)
        (out / "attention_tasks.json").write_text(json.dumps(labels))
        plot_attention_heatmap(attention, labels, out / "attention_heatmap.png")
        plot_attention_projection(attention, labels, out / "attention_projection.png")

    print((out / "results.md").read_text())


if __name__ == "__main__":
    sys.exit(main())
