"""The paper's comparison on bbir, end to end, from configs/bbir-protocol.yaml.

    python scripts/protocol.py run [--profile cpu|cpu-epoch|gpu] [--only NAME ...] [--root DIR]  # resumable
    python scripts/protocol.py cost                                         # queries/s of every query encoder
    python scripts/protocol.py report [--root docs/results/bbir-cpu]       # docs/RESULTS.md tables + docs/results/
    python scripts/protocol.py report --section epoch --root docs/results/bbir-epoch \
        --shorter docs/results/bbir-cpu:hyper:multitask docs/results/bbir-cpu:hyper-1k:multitask-1k
    python scripts/protocol.py collect --root outputs/bbir-epoch --to docs/results/bbir-epoch  # results, no weights
    python scripts/protocol.py run --profile gpu-epoch --root R --only hyper --seeds 42 45 --no-hybrid  # any seeds
    python scripts/protocol.py report --section gpu --root docs/results/bbir-gpu    # scripts/gpu_protocol.sh's runs

`run` trains every run with train.py and evaluates its dev-selected model (best/, else final/) with eval.py on the
test split, per collection (BEIR style) and, for the main table, on the pooled corpus of the in-domain collections
(KILT style); a run marked `hybrid` is evaluated again fused with BM25 (eval-bm25/, eval-pooled-bm25/), and a run's
`windows` (first or max) says how it reads long passages, in training and evaluation; a run `from` another trains
nothing and evaluates that run's model (e.g. read with MaxP windows). A finished step is skipped,
an interrupted training resumes from its last checkpoint, so the command can simply be run again. Each run's wall
times and machine go to <output_root>/<run>/protocol.json. `report` rewrites the part of docs/RESULTS.md between its
generated-section markers; the text around it is kept.

`--seeds S ...` runs (collects, reports) the named entries at those seeds instead of the file's seed lists, with the
file's naming rule (the entry's first seed keeps the name, others get -seed<S>); `--only` then names entries or runs.
`--set key=value ...` adds train.py overrides after the profile's and the run's (e.g. the backbone's folder on a
machine without the Hub); `--stop-training-at T` stops every training still running at the wall-clock time T (SIGTERM:
train.py saves a checkpoint) and evaluates the run's dev-selected model so far (scripts/gpu_protocol.sh's time box).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from experiments.protocol import ProtocolRun, at_seeds, load_protocol, model_folder  # noqa: E402
from hyper_retrieval.training.checkpoints import list_checkpoints  # noqa: E402

# The report writers (transformers, matplotlib) are imported by `report` alone: `run` and `collect` start in a second
# or two, which counts when fifteen of them start side by side (scripts/gpu_protocol.sh).


def machine() -> str:
    """The machine a step ran on, in words."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def sh(command: list[str]) -> float:
    """Runs a command from the repository root (output streamed), exits on failure; returns its wall seconds."""
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    if subprocess.run(command, cwd=REPO).returncode:
        sys.exit(f"failed: {' '.join(command)}")
    return time.perf_counter() - start


STOP_GRACE_S = 90  # after SIGTERM at the deadline: the time a training has to save its checkpoint before SIGKILL


def sh_until(command: list[str], stop_at: float | None) -> tuple[float, bool]:
    """sh, but a command still running at the wall-clock time `stop_at` (seconds since the epoch) gets SIGTERM (then
    SIGKILL after STOP_GRACE_S); returns its wall seconds and whether it was stopped. A command that fails on its own
    exits as in sh; a stopped one's exit status is not checked (the caller looks at what it left)."""
    if stop_at is None:
        return sh(command), False
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO)
    try:
        if process.wait(timeout=max(0.0, stop_at - time.time())):
            sys.exit(f"failed: {' '.join(command)}")
        return time.perf_counter() - start, False
    except subprocess.TimeoutExpired:
        print(f"--stop-training-at: the deadline has passed, stopping {command[1]} (SIGTERM)", flush=True)
        process.terminate()
        try:
            process.wait(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        return time.perf_counter() - start, True


def record(folder: Path, **facts) -> None:
    """Merges facts into <folder>/protocol.json."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "protocol.json"
    known = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(known | facts, indent=1))


def train(run: ProtocolRun, root: Path, profile: list[str], extra: list[str] = (), stop_at: float | None = None
          ) -> None:
    """train.py for a trained run (resumed if interrupted), or the untrained model saved for a config baseline;
    nothing for bm25 or a run that evaluates another's model. `extra`: overrides after the profile's and the run's
    (--set; a baseline's model is built with them too); `stop_at`: --stop-training-at."""
    folder = root / run.name
    if run.model or run.source or (folder / ("final" if run.seed is not None else "model")).is_dir():
        return
    if run.seed is None:
        from hyper_retrieval.training.config import load_config
        from hyper_retrieval.training.models import build_model

        cfg = load_config(REPO / run.config, list(extra))
        build_model(cfg.model, cfg.data.task_names).save_pretrained(folder / "model")
        return
    command = [sys.executable, "train.py", "--config", run.config, *profile, *run.overrides, *extra,
               f"model.passage_windows={run.windows}", f"train.seed={run.seed}", f"train.output_dir={folder}"]
    resume = bool(list_checkpoints(folder))  # a run killed before its first checkpoint starts again
    facts = folder / "protocol.json"
    before = json.loads(facts.read_text()).get("train_s", 0) if resume and facts.exists() else 0
    seconds, stopped = sh_until(command + (["--resume"] if resume else []), stop_at)
    record(folder, train_command=" ".join(command), train_s=before + seconds, train_machine=machine(),
           **({"train_stopped_at_deadline": stopped} if stop_at is not None else {}))
    if stopped and not (folder / "best").is_dir():
        sys.exit(f"{run.name}: training stopped at --stop-training-at before its first dev evaluation: no "
                 "dev-selected model to evaluate (run again to resume it)")


def eval_dtype(profile: list[str]) -> str:
    """eval.py's --dtype for a profile: float32 for one that trains without mixed precision (optim.mixed_precision=no),
    else auto (bf16 where the machine computes it faster)."""
    settings = [o.split("=", 1)[1] for o in profile if o.startswith("optim.mixed_precision=")]
    return "float32" if settings and settings[-1] == "no" else "auto"


def evaluate(run: ProtocolRun, protocol: dict, root: Path, hybrid: bool = True, dtype: str = "auto",
             cache_dir: Path | None = None, plots: bool = True) -> None:
    """eval.py on the test split (in `dtype`): per collection, and pooled for the main table; skipped when already
    done. `cache_dir`: eval.py's --cache-dir (default: its own); `plots`: False for eval.py --no-plots."""
    data = Path(protocol["data_root"])
    if run.held_out:
        modes = {"eval": ["--zero-shot", str(data / run.held_out)]}
    else:
        in_domain = run.in_domain or protocol["in_domain"]
        per_collection = ["--data", *(str(data / c) for c in in_domain),
                          "--zero-shot", *(str(data / c) for c in protocol["zero_shot"])]
        modes = {"eval": per_collection}
        if run.pooled:
            modes["eval-pooled"] = ["--data", *(str(data / c) for c in in_domain), "--pooled"]
    if hybrid and run.hybrid and run.primary and run.model != "bm25":  # fused with BM25, the weight chosen on dev
        modes |= {f"{mode}-bm25": [*args, "--hybrid", "bm25"] for mode, args in modes.items()}
    windows = ["--windows", run.windows] if run.model != "bm25" else []
    if cache_dir is not None and windows:
        windows += ["--cache-dir", str(cache_dir)]
    for mode, args in modes.items():
        out = root / mode / run.name
        if (out / "results.json").exists():
            continue
        chosen = root / "eval-bm25" / run.name / "results.json"
        if mode == "eval-pooled-bm25" and chosen.exists():  # the weight the per-collection run chose on dev
            args = [*args, "--fusion-weight", str(json.loads(chosen.read_text())["hybrid"]["weight"])]
        seconds = sh([sys.executable, "eval.py", "--model", model_folder(run, root), *args, *windows,
                      "--split", "test", "--out", str(out), "--no-progress", *(["--dtype", dtype] if windows else []),
                      *([] if plots else ["--no-plots"])])
        record(root / run.name, **{f"{mode}_s": seconds, f"{mode}_machine": machine()})


RUN_FILES = ("log.jsonl", "protocol.json", "train_config.yaml")
EVAL_FILES = ("results.json", "results.md", "per_query.json", "attention.npy", "attention_tasks.json")


def collect(runs: list[ProtocolRun], root: Path, to: Path) -> list[Path]:
    """Copies what `report` reads of each run (its log, config and wall times; every evaluation's results, per-query
    metrics and prompt attention), never weights, checkpoints or TREC runs, from root into to; returns the copies."""
    copied = []
    for run in runs:
        sources = [root / run.name / f for f in RUN_FILES]
        sources += [mode / run.name / f for mode in sorted(root.glob("eval*")) for f in EVAL_FILES]
        for source in sources:
            if source.is_file():
                target = to / source.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
                copied.append(target)
    return copied


def cost(runs: list[ProtocolRun], root: Path) -> None:
    """Queries/s of each system's query encoder on the same queries, in one run (bench/encode.py)."""
    systems = [r for r in runs if r.model is None and r.table in ("main", "sparse") and r.primary]
    specs = [f"{r.name}={model_folder(r, root)}" for r in systems]
    sh([sys.executable, "bench/encode.py", "--models", *specs, "--json", str(root / "query_cost.json")])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["run", "cost", "report", "collect"])
    parser.add_argument("--protocol", type=Path, default=REPO / "configs" / "bbir-protocol.yaml")
    parser.add_argument("--profile", default="gpu", help="a profiles entry of the protocol file (overrides)")
    parser.add_argument("--only", nargs="+", help="run names to do, in this order (default: all, in the file's)")
    parser.add_argument("--no-hybrid", action="store_true",
                        help="run: leave out the BM25-fused evaluations (slow on CPU); a later run adds them")
    parser.add_argument("--no-plots", action="store_true",
                        help="run: eval.py --no-plots (no figures; a machine without matplotlib, the GPU image)")
    parser.add_argument("--to", type=Path, help="collect: the folder that receives the results (e.g. "
                        "docs/results/bbir-epoch)")
    parser.add_argument("--section", choices=["main", "epoch", "adapter", "gpu"], default="main",
                        help="report: the main generated section, the one-epoch section (seeds, paired tests, the "
                             "curve of HypeR − multi-task over training length), the adapter regime's (the query "
                             "backbone frozen) or the GPU protocol's (scripts/gpu_protocol.sh: the systems and seeds "
                             "found under --root, or those of --only and --seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="S",
                        help="run, collect, report: the trained entries at these seeds instead of the file's seed "
                             "lists (the entry's first seed keeps its name, others get -seed<S>); --only then names "
                             "entries (every seed) or runs")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="extra",
                        help="run: train.py overrides after the profile's and the run's, e.g. "
                             "model.backbone=/tmp/minilm32 (an untrained baseline's model is built with them too)")
    parser.add_argument("--cache-dir", type=Path, help="run: eval.py's corpus embedding cache (default: eval.py's)")
    parser.add_argument("--stop-training-at", type=float, metavar="UNIX_TIME",
                        help="run: at this wall-clock time (seconds since the epoch) a training still running is "
                             "stopped (SIGTERM: a checkpoint) and its dev-selected model so far evaluated")
    parser.add_argument("--shorter", nargs="*", default=[], metavar="ROOT:HYPER:MULTITASK",
                        help="report --section epoch: the curve's shorter runs, e.g. "
                             "docs/results/bbir-cpu:hyper:multitask docs/results/bbir-cpu:hyper-1k:multitask-1k")
    parser.add_argument("--docs", type=Path, default=REPO / "docs", help="where report writes RESULTS.md and figures")
    parser.add_argument("--root", type=Path, help="run: where runs are written; report: saved results to read "
                        "(default: the protocol's output_root; docs/results/bbir-cpu holds the committed copy of the "
                        "CPU run)")
    args = parser.parse_args()
    try:
        protocol, runs = load_protocol(args.protocol)
    except ValueError as e:
        sys.exit(str(e))
    root = args.root.resolve() if args.root else REPO / protocol["output_root"]
    every_run = runs
    if args.seeds:
        runs = at_seeds(runs, args.seeds)
        if args.only:  # entries (at every seed) or runs, in the order named
            unknown = set(args.only) - {r.name for r in runs} - {r.base for r in runs}
            if unknown:
                sys.exit(f"--only: no entry or run named {sorted(unknown)} in {args.protocol}")
            runs = list({id(r): r for name in args.only for r in runs if name in (r.name, r.base)}.values())
    elif args.only:
        by_name = {r.name: r for r in runs}
        unknown = set(args.only) - set(by_name)
        if unknown:
            sys.exit(f"--only: no run named {sorted(unknown)} in {args.protocol}")
        runs = [by_name[name] for name in dict.fromkeys(args.only)]
    if args.step == "run":
        if args.profile not in protocol["profiles"]:
            sys.exit(f"--profile {args.profile!r}: {args.protocol} has profiles {sorted(protocol['profiles'])}")
        profile = list(protocol["profiles"][args.profile])
        for run in runs:
            print(f"==== {run.name}", flush=True)
            train(run, root, profile, args.extra, args.stop_training_at)
            record(root / run.name, profile=args.profile)
            evaluate(run, protocol, root, hybrid=not args.no_hybrid, dtype=eval_dtype(profile + args.extra),
                     cache_dir=args.cache_dir, plots=not args.no_plots)
    elif args.step == "collect":
        if args.to is None:
            sys.exit("collect needs --to FOLDER")
        print(f"collected {len(collect(runs, root, args.to))} files into {args.to}")
    elif args.step == "cost":
        cost(runs, root)
    elif args.section == "gpu":
        from experiments.gpu_report import write_gpu_report

        write_gpu_report(protocol, every_run, root, args.docs, names=args.only, seeds=args.seeds)
    elif args.section == "adapter":
        from experiments.adapter_report import write_adapter_report

        write_adapter_report(protocol, runs, root, args.docs)
    elif args.section == "epoch":
        from experiments.epoch_report import write_epoch_report

        shorter = [(Path(root_), hyper, multitask) for root_, hyper, multitask in (s.split(":") for s in args.shorter)]
        write_epoch_report(protocol, runs, root, args.docs, shorter)
    else:
        from experiments.report import write_report

        write_report(protocol, runs, root, args.docs)


if __name__ == "__main__":
    main()
