"""Evaluate a retriever (a saved model, a Hub id, or bm25) on BEIR-format collections; compare saved evaluations.

    python eval.py --model outputs/hyper --data ../shared/data/bbir/nq_ckc ../shared/data/bbir/qasc \
        --zero-shot ../shared/data/bbir/ropes --split test --out outputs/eval/hyper
    python eval.py --model bm25 --data ../shared/data/bbir/ropes --out outputs/eval/bm25
    python eval.py --model outputs/hyper --data ../shared/data/bbir/quoref --windows max --hybrid bm25
    python eval.py --config configs/eval.yaml [--any-option value]
    python eval.py --compare outputs/eval/bm25 outputs/eval/hyper --out outputs/eval/compare
    accelerate launch --num_processes 2 eval.py --model outputs/hyper --data ... --index ivfpq --refine-factor 4

Long passages: --windows max reads every window of a passage (MaxP, --window-stride apart) and scores a document
by its best; --windows first (the default) reads the first --max-length tokens. --hybrid bm25 fuses the model's run
with BM25's (--fusion convex, its weight chosen on the in-domain collections' dev split, or rrf).

Large corpora: a corpus is encoded in shards of --shard-docs documents, each cached under --cache-dir as it
finishes (a killed run resumes there). Under `accelerate launch` every process encodes its share of the shards and
the main process searches and scores. --index ivfpq / opq keep product-quantised codes instead of the vectors.

Writes results.json, results.md, per_query.json and runs/<collection>.trec to --out (plus attention.npy,
attention_tasks.json and the attention plots for a hyper-prompt model). --out is locked while eval.py runs (a second
eval.py into it stops at once, naming the first) and is never an input (--model, --data), a training run's
artefacts, a checkpoint, a saved model or an export, nor inside or holding one (RUN/eval beside a run's artefacts is
fine); results of a different evaluation there are replaced only with --overwrite. Each results file is
written whole under a temporary name and renamed into place: a full disk leaves the earlier ones as they were.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from hyper_retrieval.cli.loading import launched_processes, load_retriever
from hyper_retrieval.cli.options import (
    POSITIVE,
    add_encoding_options,
    add_index_options,
    config_argv,
    index_options,
    number,
    run_main,
)
from hyper_retrieval.core.folder_lock import FolderBusyError, lock_folder
from hyper_retrieval.core.run_folders import EVALUATION, RunFolderError, check_output_folder
from hyper_retrieval.core.strict_yaml import load_yaml

if TYPE_CHECKING:
    from hyper_retrieval.evaluation.evaluation import Fusion

# The rest is imported where it is used: `eval.py --help` loads neither torch nor faiss.


def fusion(args: argparse.Namespace, sources: list[str], collections: list, zero_shot: set[str]) -> Fusion:
    """--hybrid's settings; the in-domain collections' --dev-split when the convex weight is to be chosen there."""
    from hyper_retrieval.data.beir import load_other_split
    from hyper_retrieval.evaluation.evaluation import Fusion
    from hyper_retrieval.search.searchers import BM25Searcher

    lexical = BM25Searcher(args.bm25_k1, args.bm25_b, not args.no_progress)
    if args.fusion != "convex" or args.fusion_weight is not None:
        return Fusion(lexical, args.fusion, args.fusion_weight, label=args.hybrid)
    in_domain = [(s, c) for s, c in zip(sources, collections, strict=True) if c.name not in zero_shot]
    if not in_domain:
        raise SystemExit("--hybrid: choosing the fusion weight needs in-domain collections (--data) with a "
                         f"{args.dev_split!r} split; give --fusion-weight for zero-shot collections alone")
    dev = [load_other_split(s, args.dev_split, c.corpus, args.on_unknown) for s, c in in_domain]
    return Fusion(lexical, "convex", None, dev, args.dev_split, args.hybrid)


def build_parser() -> argparse.ArgumentParser:
    """eval.py's options, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of options (keys as the long options, '-' or '_')")
    parser.add_argument("--model", help="model folder, Hub id, or 'bm25'")
    parser.add_argument("--data", nargs="+", default=[], help="collection folders or Hub names (in-domain)")
    parser.add_argument("--zero-shot", nargs="*", default=[],
                        help="collections never trained on: names of --data entries, or further folders/Hub names")
    parser.add_argument("--split", default="test", help="the qrels split evaluated (qrels/<split>.tsv)")
    parser.add_argument("--pooled", action="store_true", help="one index over all corpora (KILT style)")
    parser.add_argument("--out", help="output folder (default outputs/eval/<model name>)")
    parser.add_argument("--overwrite", action="store_true", help="replace results of a different evaluation in --out")
    parser.add_argument("--batch-size", type=POSITIVE, default=64, help="texts encoded per forward pass")
    add_encoding_options(parser)
    parser.add_argument("--index", choices=["flat", "ivf", "hnsw", "hnsw-sq8", "ivfpq", "ivfpq-fs", "opq"],
                        default="flat",
                        help="dense search: exact (flat, streamed over the corpus shards) or approximate faiss "
                             "IVF-Flat, HNSW (over SQ8 codes), IVF-PQ (8-bit, or 4-bit fast-scan codes re-scored "
                             "from the stored vectors) or OPQ + IVF-PQ, with its recall against exact search, bytes "
                             "per vector and queries/s in results.json (docs/SCALING.md: which to pick)")
    add_index_options(parser)
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (dynamic shapes)")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="run code a non-HypeR model ships (HypeR models load with this repository's classes)")
    parser.add_argument("--k", type=POSITIVE, default=100, help="documents retrieved per query")
    parser.add_argument("--hybrid", choices=["bm25"], default=None,
                        help="fuse the model's run with BM25's (results.json then holds the fused run; the model "
                             "alone, BM25 alone and the other fusion under 'hybrid')")
    parser.add_argument("--fusion", choices=["convex", "rrf"], default="convex",
                        help="--hybrid: convex combination of min-max normalised scores, or reciprocal-rank fusion")
    parser.add_argument("--fusion-weight", type=number(float, 0, 1), default=None,
                        help="--hybrid convex: the model's weight in [0, 1]; default: chosen on --dev-split of the "
                             "in-domain collections (nDCG@10)")
    parser.add_argument("--dev-split", default="dev", help="--hybrid: the split the fusion weight is chosen on")
    parser.add_argument("--prune-query-terms", type=POSITIVE, default=None, help="sparse models: keep the top-K terms")
    parser.add_argument("--bm25-k1", type=number(float, 0, 100), default=0.9,
                        help="BM25 term-frequency saturation (Lucene), in [0, 100] (usual: 0.9-2)")
    parser.add_argument("--bm25-b", type=number(float, 0, 1), default=0.4,
                        help="BM25 length normalisation (Lucene), in [0, 1]")
    parser.add_argument("--cache-dir", default="outputs/embedding_cache", help="corpus embedding cache ('' for none)")
    parser.add_argument("--on-unknown", choices=["raise", "skip"], default="raise",
                        help="qrels naming unknown ids: fail (default) or skip them with a warning")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    parser.add_argument("--no-plots", action="store_true",
                        help="no PNG figures (the results and attention files are written all the same); for a "
                             "machine without matplotlib")
    parser.add_argument("--compare", nargs="+", metavar="RUN", help="output folders (or results.json) to compare")
    parser.add_argument("--metric", default="ndcg@10", help="metric of the --compare table and chart")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line, with defaults taken from --config (a YAML mapping of option names) when given: the file's
    values go through the same parser as flags (types, ranges, choices), flags on the command line win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        try:
            options = load_yaml(Path(args.config).read_bytes(), args.config) or {}
            from_file = config_argv(parser, options, args.config)
        except (OSError, ValueError) as e:
            parser.error(str(e))
        file_parser = build_parser()
        file_parser.error = lambda message: parser.error(f"{args.config}: {message}")  # name the file
        file_parser.parse_args(from_file)
        args = parser.parse_args(from_file + list(argv if argv is not None else sys.argv[1:]))
    if not args.compare and (not args.model or not (args.data or args.zero_shot)):
        parser.error("--model and --data (or --zero-shot) are required, unless --compare is given")
    if args.window_stride is not None and args.windows != "max":
        parser.error(f"--window-stride {args.window_stride}: a stride goes with --windows max")
    if args.window_stride is not None and args.max_length is not None and args.window_stride > args.max_length:
        parser.error(f"--window-stride {args.window_stride}: at most the window, --max-length {args.max_length}")
    if not args.no_plots and importlib.util.find_spec("matplotlib") is None:
        parser.error("the figures need matplotlib (pip install matplotlib), or pass --no-plots")
    if args.hybrid and args.model == "bm25":
        parser.error("--hybrid bm25 fuses BM25 with a model; --model is bm25 already")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out}: a file is there; results go into a folder")
    return args


def compare(runs: list[str], out: Path, metric: str, plots: bool = True) -> None:
    """Side-by-side Markdown table (and bar chart, with `plots`) of saved evaluations; where every run has its
    per_query.json, each run's paired test against the first (hyper_retrieval/evaluation/significance.py)."""
    from hyper_retrieval.evaluation.plots import plot_collection_bars
    from hyper_retrieval.evaluation.results import (
        compare_markdown,
        load_per_query,
        load_results,
        metric_by_collection,
        run_labels,
    )
    from hyper_retrieval.evaluation.significance import significance_markdown


    try:
        labels = run_labels(runs)
        results = {label: load_results(r) for label, r in zip(labels, runs, strict=True)}
    except ValueError as e:  # the same run twice; a results.json cut short (its path named)
        raise SystemExit(str(e)) from None
    try:  # one writer per --out, never inside or around a compared run
        lock = lock_folder(out, check=lambda: check_output_folder(
            out, "--out", None, {"--compare": [p.parent if p.name == "results.json" else p for p in map(Path, runs)]}))
    except (FolderBusyError, RunFolderError) as e:
        raise SystemExit(f"eval.py: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    table = compare_markdown(results, metric)
    per_query = {label: load_per_query(r) for label, r in zip(labels, runs, strict=True)}
    if len(runs) > 1 and all(q is not None for q in per_query.values()):
        table += "\n" + significance_markdown({n: (results[n], per_query[n]) for n in results}, metric)
    (out / "compare.md").write_text(table)
    if plots:
        plot_collection_bars({name: metric_by_collection(r, metric) for name, r in results.items()},
                             out / f"compare_{metric.replace('@', '_at_')}.png", metric=metric)
    print(table)
    lock.release()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import numpy as np
    import torch

    from hyper_retrieval.core.fingerprints import passage_encoder_fingerprint, path_fingerprint
    from hyper_retrieval.core.precision import resolve_dtype
    from hyper_retrieval.data.beir import load_collection
    from hyper_retrieval.evaluation.evaluation import evaluate
    from hyper_retrieval.evaluation.plots import plot_attention_heatmap, plot_attention_projection, plot_collection_bars
    from hyper_retrieval.evaluation.results import (
        ResultsWriteError,
        check_output_dir,
        metric_by_collection,
        write_results,
    )
    from hyper_retrieval.search.corpus_encoder import CorpusEncoder, PassageWindows
    from hyper_retrieval.search.searchers import BM25Searcher, ModelSearcher

    if args.compare:
        compare(args.compare, Path(args.out or "outputs/eval/compare"), args.metric, plots=not args.no_plots)
        return

    # What is evaluated: --data entries are in-domain; --zero-shot names some of them or adds collections.
    data_names = {Path(d).name: d for d in args.data}
    sources = list(args.data) + [z for z in args.zero_shot if Path(z).name not in data_names]
    names = [Path(s).name for s in sources]
    clashing = sorted({n for n in names if names.count(n) > 1})
    if clashing:
        raise SystemExit(f"--data/--zero-shot: several collections are named {clashing} (folder names tell them "
                         "apart in the results)")
    zero_shot = {Path(z).name for z in args.zero_shot}
    is_bm25 = args.model == "bm25"
    settings = {"model": args.model, "data": [str(Path(s).resolve()) if Path(s).exists() else s for s in sources],
                "zero_shot": sorted(zero_shot), "split": args.split, "pooled": args.pooled, "k": args.k}
    settings |= ({"bm25_k1": args.bm25_k1, "bm25_b": args.bm25_b} if is_bm25 else
                 {"model_fingerprint": path_fingerprint(args.model), "index": args.index,
                  "dtype": resolve_dtype(args.dtype, "cuda" if torch.cuda.is_available() else "cpu"),
                  "max_length": args.max_length, "prune_query_terms": args.prune_query_terms,
                  "windows": args.windows, "window_stride": args.window_stride})
    options = index_options(args) if not is_bm25 and args.index != "flat" else {}
    settings |= options
    if args.hybrid:
        settings |= {"hybrid": args.hybrid, "fusion": args.fusion, "fusion_weight": args.fusion_weight,
                     "dev_split": args.dev_split, "bm25_k1": args.bm25_k1, "bm25_b": args.bm25_b}
    out = Path(args.out or Path("outputs/eval") / Path(args.model).name)
    processes = launched_processes()  # one, or those of `accelerate launch` / torchrun
    try:  # one writer per --out (the main process: it alone writes there); never an input, a run, a model, an export
        lock = lock_folder(out, check=lambda: check_output_folder(
            out, "--out", EVALUATION, {"--model": [] if is_bm25 else [args.model], "--data/--zero-shot": sources},
        )) if processes.is_main_process else None
    except (FolderBusyError, RunFolderError) as e:
        raise SystemExit(f"eval.py: {e}") from None
    check_output_dir(out, settings, args.overwrite)

    if processes.num_processes > 1 and (is_bm25 or not args.cache_dir):
        raise SystemExit("several processes split a model's corpus encoding into shards under --cache-dir; "
                         f"{'bm25 runs on one process' if is_bm25 else '--cache-dir is empty'}")
    collections = [load_collection(s, args.split, on_unknown=args.on_unknown) for s in sources]
    progress = not args.no_progress and processes.is_main_process
    if is_bm25:
        searcher = BM25Searcher(args.bm25_k1, args.bm25_b, progress)
    else:
        model = load_retriever(args.model, args.dtype, args.compile, args.trust_remote_code, processes.device)
        # Corpus embeddings are cached under what computes them: the passage encoder, when the model says which.
        cache_fingerprint = passage_encoder_fingerprint(model) or settings["model_fingerprint"]
        try:
            encoder = CorpusEncoder(model, cache_fingerprint, batch_size=args.batch_size, max_length=args.max_length,
                                    cache_dir=Path(args.cache_dir) if args.cache_dir else None,
                                    show_progress=progress, windows=PassageWindows(args.windows, args.window_stride),
                                    shard_docs=args.shard_docs)
            searcher = ModelSearcher(encoder, index_kind=args.index, prune_query_terms=args.prune_query_terms,
                                     index_options=options)
        except ValueError as e:  # a setting this model cannot take: one line, before any corpus is encoded
            raise SystemExit(f"eval.py: {e}") from None
    if processes.num_processes > 1:  # every process encodes its shards; the main one then searches and scores
        for c in collections:
            searcher.encoder.encode_shards(c.corpus, processes.process_index, processes.num_processes)
        processes.wait_for_everyone()
        if not processes.is_main_process:
            return

    spec = fusion(args, sources, collections, zero_shot) if args.hybrid else None
    done = evaluate(searcher, collections, zero_shot, args.k, settings, args.pooled, spec)
    results, attention, labels = done.results, done.attention, done.labels
    try:  # each file whole under a temporary name, then renamed: a full disk leaves the old results as they were
        write_results(out, results, done.collections)
    except ResultsWriteError as e:
        raise SystemExit(f"eval.py: {e}") from None
    if attention is not None:
        np.save(out / "attention.npy", attention)
        (out / "attention_tasks.json").write_text(json.dumps(labels))
    if not args.no_plots:
        plot_collection_bars({args.model: metric_by_collection(results)}, out / "ndcg_at_10.png")
        if attention is not None:
            plot_attention_heatmap(attention, labels, out / "attention_heatmap.png")
            plot_attention_projection(attention, labels, out / "attention_projection.png")

    print((out / "results.md").read_text())
    lock.release()


if __name__ == "__main__":
    run_main(main)
