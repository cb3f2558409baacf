"""Many hyper-prompt adapters on one backbone: memory and queries/s with 1, 8 and 64 adapters loaded.

Adapters trained with the query backbone frozen are loaded onto one all-MiniLM-L6-v2 (`model.load_adapter`); the
passages need no adapter, so one passage index serves them all. For each count the script reports the model's
parameter bytes (backbone + adapters, counted exactly), the process's resident memory (RSS) growth, and queries/s
of `encode_queries` with the adapter switched per call (`adapter=name`, cycling through the loaded ones) against the
same queries with one adapter: the ratios say what loading many adapters costs. Counts are timed interleaved over
rounds, each keeping its best, so a slow moment hits them alike.

    python bench/adapters.py [--counts 1 8 64] [--queries 512] [--rounds 3] [--batch-size 32] [--threads 2]
"""

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.encode import load_queries  # noqa: E402
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel  # noqa: E402

BACKBONE = "sentence-transformers/all-MiniLM-L6-v2"


def save_adapters(folder: Path, count: int) -> list[Path]:
    """`count` distinct adapters of the default pool (5 prompts), as a frozen-backbone run saves them."""
    model = HyperRetrieverModel.from_backbone(BACKBONE, hyper_prompt=HyperPromptConfig(), freeze_query_backbone=True,
                                              share_encoders=False, freeze_passage_encoder=True)
    model.calibrate_synthesizer(load_queries(256))
    folders = []
    for i in range(count):
        torch.manual_seed(i)
        model.hyper_prompt.reset_pool()
        model.save_adapter(folder / f"adapter-{i}")
        folders.append(folder / f"adapter-{i}")
    return folders


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--queries", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    queries = load_queries(args.queries)
    chunks = [queries[i : i + args.batch_size] for i in range(0, len(queries), args.batch_size)]
    with tempfile.TemporaryDirectory() as tmp:
        folders = save_adapters(Path(tmp), max(args.counts))
        before = rss()
        model = HyperRetrieverModel.from_backbone(BACKBONE).eval()
        backbone_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        backbone_rss = rss() - before
        models, memory = {}, {}
        for count in sorted(args.counts):
            start = rss()
            models[count] = HyperRetrieverModel.from_backbone(BACKBONE).eval()
            for i, folder in enumerate(folders[:count]):
                models[count].load_adapter(folder, adapter_name=f"a{i}")
            adapter_bytes = 0
            for name in models[count].adapter_names:
                with models[count].using_adapter(name) as model:
                    adapter_bytes += sum(p.numel() * p.element_size() for p in model.hyper_prompt.parameters())
            memory[count] = (adapter_bytes, rss() - start)
        for model in models.values():  # warm-up
            model.encode_queries(queries[:64], batch_size=args.batch_size)
        best = dict.fromkeys(models, float("inf"))
        for _ in range(args.rounds):
            for count, model in models.items():
                names = model.adapter_names
                started = time.perf_counter()
                for i, chunk in enumerate(chunks):  # a request per chunk, each naming its adapter
                    model.encode_queries(chunk, batch_size=args.batch_size, adapter=names[i % len(names)])
                best[count] = min(best[count], time.perf_counter() - started)
    reference = min(models)
    print(f"all-MiniLM-L6-v2, {len(queries)} bbir queries in requests of {args.batch_size}, the adapter switched per "
          f"request; {args.threads} threads, best of {args.rounds}")
    print(f"backbone: {backbone_bytes / 2**20:.1f} MiB of parameters, {backbone_rss / 2**20:.1f} MiB RSS")
    header = ("adapters", "adapter MiB", "per adapter KiB", "model MiB", "RSS growth MiB", "queries/s",
              f"ratio vs {reference}")
    print("".join(f"{h:>16}" for h in header))
    for count in models:
        adapter_bytes, grown = memory[count]
        print("".join(f"{v:>16}" for v in (
            count, f"{adapter_bytes / 2**20:.2f}", f"{adapter_bytes / count / 2**10:.1f}",
            f"{(backbone_bytes + adapter_bytes) / 2**20:.1f}", f"{grown / 2**20:.1f}",
            f"{len(queries) / best[count]:.1f}", f"{best[reference] / best[count]:.3f}")))


if __name__ == "__main__":
    main()
