"""Encode a corpus alone into cached shards, on one process or several; optionally build and save a search index.

    python encode.py --model outputs/hyper/final --corpus ../shared/data/bbir/nq_ckc
    accelerate launch --num_processes 2 encode.py --model outputs/hyper/final --corpus ../shared/data/bbir/nq_ckc
    python encode.py --model outputs/hyper/final --corpus ../shared/data/bbir/nq_ckc --index ivfpq-fs \\
        --index-out outputs/index/nq_ckc.ivfpq --nprobe 16

The corpus is cut into shards of --shard-docs documents; process r of w encodes shards r, r + w, ... (each
token-length-sorted, in batches) and caches each one under --cache-dir as it finishes: a run killed mid-way resumes
from the shards it finished. eval.py with the same model, corpus, --cache-dir and window settings finds them all.
With --index, the main process then trains that index on a sample, fills it from the shards chunk by chunk, saves it
to --index-out (reopen with hyper_retrieval.search.index.DenseIndex.load, memory-mapped) and prints its bytes per
vector. --index-out is never an input (--model, --corpus) nor inside one, a run's artefacts, a checkpoint, a saved
model, an export or an evaluation; the index is written atomically, so two runs saving one file leave one whole
index (the shard cache has its own concurrency design).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hyper_retrieval.cli.options import POSITIVE, add_encoding_options, add_index_options, index_options, run_main
from hyper_retrieval.core.run_folders import RunFolderError, check_output_folder


def build_parser() -> argparse.ArgumentParser:
    """encode.py's options, each with its help."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or Hub id")
    parser.add_argument("--corpus", required=True, help="corpus.jsonl, a BEIR folder holding one, or a Hub name")
    parser.add_argument("--cache-dir", default="outputs/embedding_cache", help="where the shards are cached")
    parser.add_argument("--batch-size", type=POSITIVE, default=64, help="passages encoded per forward pass")
    add_encoding_options(parser)
    parser.add_argument("--trust-remote-code", action="store_true", help="run code a non-HypeR model ships")
    parser.add_argument("--index", choices=["ivf", "hnsw", "hnsw-sq8", "ivfpq", "ivfpq-fs", "opq"], default=None,
                        help="also build this approximate index from the shards and save it to --index-out")
    parser.add_argument("--index-out", type=Path, help="file the index is saved to (settings beside it, + .json)")
    add_index_options(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.index) != bool(args.index_out):
        parser.error("--index and --index-out go together")
    if args.index_out is not None:  # never over an input, nor into a run's artefacts, a model or an evaluation
        try:
            check_output_folder(args.index_out, "--index-out", None, {"--model": [args.model],
                                                                       "--corpus": [args.corpus]}, holding=False)
        except RunFolderError as e:
            parser.error(str(e))

    from hyper_retrieval.cli.loading import launched_processes, load_retriever
    from hyper_retrieval.core.fingerprints import passage_encoder_fingerprint, path_fingerprint
    from hyper_retrieval.data.beir import load_corpus
    from hyper_retrieval.search.corpus_encoder import CorpusEncoder, PassageWindows
    from hyper_retrieval.search.index import DenseIndex

    processes = launched_processes()
    rank, world = processes.process_index, processes.num_processes
    corpus = load_corpus(args.corpus)
    model = load_retriever(args.model, args.dtype, trust_remote_code=args.trust_remote_code, device=processes.device)
    encoder = CorpusEncoder(model, passage_encoder_fingerprint(model) or path_fingerprint(args.model),
                            args.batch_size, args.max_length, cache_dir=Path(args.cache_dir),
                            show_progress=not args.no_progress, shard_docs=args.shard_docs,
                            windows=PassageWindows(args.windows, args.window_stride))
    start = time.perf_counter()
    hits = encoder.encode_shards(corpus, rank, world)
    print(f"process {rank}/{world}: {len(hits)} shards, {sum(hits)} found cached, {len(hits) - sum(hits)} encoded "
          f"in {time.perf_counter() - start:.1f} s")
    processes.wait_for_everyone()
    if not processes.is_main_process:
        return
    store, _ = encoder.encode(corpus)  # every shard is cached now: this only reads them back
    print(f"{args.corpus}: {len(corpus)} documents, {len(store)} vectors of {store.dim} dimensions in "
          f"{len(store.shards)} shards under {args.cache_dir}")
    if args.index:
        if store.sparse:
            sys.exit("--index: a sparse model's corpus is searched with the inverted index eval.py builds")
        start = time.perf_counter()
        index = DenseIndex(store, kind=args.index, show_progress=not args.no_progress, **index_options(args))
        index.save(args.index_out, model=encoder.model_fingerprint)
        print(f"{args.index} index: built in {time.perf_counter() - start:.1f} s, {index.bytes_per_vector():.1f} "
              f"bytes per vector (flat: {4 * store.dim}), saved to {args.index_out}")


if __name__ == "__main__":
    run_main(main)
