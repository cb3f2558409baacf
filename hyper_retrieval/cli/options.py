"""What the command lines share: eval.py and encode.py's options, and how train.py, eval.py and encode.py end on bad
data. argparse only: a CLI's --help imports nothing heavy."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from hyper_retrieval.core.strict_yaml import short_repr
from hyper_retrieval.core.types import WINDOW_MODES


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


def number(kind: type, minimum: float | None = None, maximum: float | None = None) -> Callable[[str], Any]:
    """An argparse type: an int or float (``kind``) within [minimum, maximum]; the error says the range. A float is
    finite: nan, inf and what overflows to it (1e400) are refused whatever the range."""
    if kind is int:
        allowed = f"an integer >= {minimum:g}" if maximum is None else f"an integer in [{minimum:g}, {maximum:g}]"
    else:
        allowed = "a number" + ("" if minimum is None else f" >= {minimum:g}" if maximum is None
                                else f" in [{minimum:g}, {maximum:g}]")

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text!r}") from None
        if ((kind is float and not math.isfinite(value)) or (minimum is not None and value < minimum)
                or (maximum is not None and value > maximum)):
            raise argparse.ArgumentTypeError(f"expected {allowed}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


POSITIVE = number(int, 1)


def config_argv(parser: argparse.ArgumentParser, options: Any, source: str) -> list[str]:
    """A YAML mapping of options (keys as the long options, '-' or '_') as the command-line words that set them, so
    that the parser checks a file's values exactly as it checks flags. ValueError naming ``source`` and the key for
    an unknown key, a switch that is not true/false, a list option that is not a list or a value that is a mapping."""
    if not isinstance(options, dict):
        raise ValueError(f"{source}: expected a mapping of option names to values, got {type(options).__name__}")
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    argv = []
    for key, value in options.items():
        action = actions.get(str(key).replace("-", "_"))
        if action is None or action.dest in ("help", "config"):
            raise ValueError(f"{source}: unknown option {key!r} (the long options of --help, '-' or '_')")
        flag = action.option_strings[-1]
        if action.nargs == 0:  # a switch
            if not isinstance(value, bool):
                raise ValueError(f"{source}: {key}: expected true or false, got {short_repr(value)} "
                                 f"({type(value).__name__})")
            argv += [flag] if value else []
        elif action.nargs in ("+", "*"):
            if not isinstance(value, list) or any(isinstance(v, dict | list) for v in value):
                raise ValueError(f"{source}: {key}: expected a list of values, got {short_repr(value)} "
                                 f"({type(value).__name__})")
            argv += [flag, *map(str, value)] if value or action.nargs == "*" else []
        elif value is not None:
            if isinstance(value, dict | list | bool):
                raise ValueError(f"{source}: {key}: expected a single value, got {short_repr(value)} "
                                 f"({type(value).__name__})")
            argv += [f"{flag}={value}"]
    return argv


def add_index_options(parser: argparse.ArgumentParser) -> None:
    """--nlist, --nprobe, --pq-m, --refine-factor: the settings of an approximate DenseIndex."""
    parser.add_argument("--nlist", type=POSITIVE, default=None, help="IVF kinds: cells (default 4 sqrt(n))")
    parser.add_argument("--nprobe", type=POSITIVE, default=32, help="IVF kinds: cells searched per query")
    parser.add_argument("--pq-m", type=POSITIVE, default=None,
                        help="ivfpq/opq: code bytes per vector (default dim / 8); ivfpq-fs: 4-bit codes per vector "
                             "(default dim / 2)")
    parser.add_argument("--refine-factor", type=POSITIVE, default=None,
                        help="approximate kinds: re-score k x this many candidates exactly from the stored vectors "
                             "(default 4 for ivfpq-fs, else 1)")


def index_options(args: argparse.Namespace) -> dict[str, Any]:
    """The DenseIndex keyword arguments of those options."""
    return {"nlist": args.nlist, "nprobe": args.nprobe, "pq_m": args.pq_m, "refine_factor": args.refine_factor}


def add_encoding_options(parser: argparse.ArgumentParser) -> None:
    """How passages are read and encoded: --max-length, --windows, --window-stride, --shard-docs, --dtype."""
    parser.add_argument("--max-length", type=POSITIVE, default=None,
                        help="tokens per passage window, at most the backbone's positions (512 for MiniLM); "
                             "default: the model's max_seq_length. A HypeR model reads queries at its own query "
                             "length (max_query_length); another model's encoders get max_length for both")
    parser.add_argument("--windows", choices=WINDOW_MODES, default="first",
                        help="long passages: first = FirstP, the first window only (truncated); max = MaxP, every "
                             "window encoded, a document scored by its best")
    parser.add_argument("--window-stride", type=POSITIVE, default=None,
                        help="MaxP: text tokens between window starts (default: half a window)")
    parser.add_argument("--shard-docs", type=POSITIVE, default=50_000,
                        help="documents per corpus shard (encoded, cached and read back one at a time; split "
                             "between processes under accelerate launch)")
    parser.add_argument("--dtype", choices=["auto", "float32", "bfloat16"], default="auto",
                        help="model weights: auto is bfloat16 where it computes faster (a bf16 GPU, a CPU with AMX, "
                        "an AMD CPU with AVX512-BF16), else float32")
