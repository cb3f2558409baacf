"""train.py as a user runs it: steps/s over a run, and the seconds from launch to the first step, cold and warm.

    python bench/train_run.py --config configs/bbir-hyper.yaml [--steps 600] [--cache-dir DIR] [section.key=value ...]

Runs train.py twice into a temporary folder, both with the caches under --cache-dir (BM25 negatives, the frozen
passage table, the training queries' token ids): first --steps steps with whatever the caches hold (empty: cold),
then 2 steps with them warm. Prints the median steps/s over the first run's log windows after its first one (which
holds the warm-up), and each run's `startup_s` (log.jsonl: from the process's start to its first step).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def train(config: str, overrides: list[str], out: Path, steps: int) -> list[dict]:
    """train.py for `steps` steps into `out`; its log.jsonl records (its output shown only if it fails)."""
    run = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", config, *overrides,
                          f"train.output_dir={out}", "--stop-after-steps", str(steps)],
                         cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if run.returncode != 0:
        sys.exit(f"train.py failed ({run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("overrides", nargs="*", help="section.key=value, as train.py takes them")
    parser.add_argument("--steps", type=int, default=600, help="steps of the timed run")
    parser.add_argument("--cache-dir", type=Path, help="the runs' caches (default: a temporary folder, so cold)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cache = args.cache_dir or Path(tmp) / "cache"
        overrides = [*args.overrides, f"data.negatives_cache_dir={cache / 'negatives'}",
                     f"train.embedding_cache_dir={cache / 'embeddings'}"]
        timed = train(args.config, overrides, Path(tmp) / "timed", args.steps)
        warm = train(args.config, [*overrides, "train.log_every=1"], Path(tmp) / "warm", 2)  # a record to read
        batch = yaml.safe_load((Path(tmp) / "timed" / "train_config.yaml").read_text())["train"]["batch_size"]
    rates = [r["queries_per_s"] / batch for r in timed[1:] if "queries_per_s" in r]
    if not rates:
        sys.exit(f"{args.steps} steps gave fewer than two log windows: raise --steps or lower train.log_every")
    print(f"{args.config}: train.py alone, {os.cpu_count()} cores: {statistics.median(rates):.2f} steps/s "
          f"(median of {len(rates)} log windows after the first, batch {batch}); launch to the first step "
          f"{timed[0]['startup_s']:.1f} s with the caches as found, {warm[0]['startup_s']:.1f} s with them warm")


if __name__ == "__main__":
    main()
