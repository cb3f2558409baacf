"""What the command lines share: eval.py and encode.py's options, and how train.py, eval.py and encode.py end on bad
data. argparse only: a CLI's --help imports nothing heavy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any


def run_main(main: Callable[[], int | None]) -> None:
    """Runs a command line's ``main`` and exits with its status; bad data (beir.DataError) ends in one line naming the
    file, not a traceback."""
    try:
        sys.exit(main())
    except ValueError as e:
        from hyper_retrieval.data.beir import DataError  # imported here, once it is needed: beir loads numpy

        if not isinstance(e, DataError):
            raise
        sys.exit(f"data error: {e}")


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """--nlist, --nprobe, --pq-m, --refine-factor: the settings of an approximate DenseIndex."""
    parser.add_argument("--nlist", type=int, default=None, help="IVF kinds: cells (default 4 sqrt(n))")
    parser.add_argument("--nprobe", type=int, default=32, help="IVF kinds: cells searched per query")
    parser.add_argument("--pq-m", type=int, default=None,
                        help="ivfpq/opq: code bytes per vector (default dim / 8); ivfpq-fs: 4-bit codes per vector "
                             "(default dim / 2)")
    parser.add_argument("--refine-factor", type=int, default=None,
                        help="approximate kinds: re-score k x this many candidates exactly from the stored vectors "
                             "(default 4 for ivfpq-fs, else 1)")


def index_options(args: argparse.Namespace) -> dict[str, Any]:
    """The DenseIndex keyword arguments of those options."""
    return {"nlist": args.nlist, "nprobe": args.nprobe, "pq_m": args.pq_m, "refine_factor": args.refine_factor}


def add_encoding_options(parser: argparse.ArgumentParser) -> None:
    """How passages are read and encoded: --max-length, --windows, --window-stride, --shard-docs, --dtype."""
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per passage window (and query), at most the backbone's positions (512 for "
                             "MiniLM); default: the model's max_seq_length")
    parser.add_argument("--windows", choices=["first", "max"], default="first",
                        help="long passages: first = FirstP, the first window only (truncated); max = MaxP, every "
                             "window encoded, a document scored by its best")
    parser.add_argument("--window-stride", type=int, default=None,
                        help="MaxP: text tokens between window starts (default: half a window)")
    parser.add_argument("--shard-docs", type=int, default=50_000,
                        help="documents per corpus shard (encoded, cached and read back one at a time; split "
                             "between processes under accelerate launch)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="model weights: auto is bfloat16 where it computes faster (a bf16 GPU, a CPU with AMX), "
                        "else float32")
