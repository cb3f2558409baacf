"""scripts/gpu_protocol.sh: the protocol on one GPU in one call. Its --dry-run runs every step on the CPU on tiny inputs
(no faiss, as on the GPU); protocol.py's --seeds names runs by the file's rule; the gpu-epoch profile is one epoch."""

import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time

import pytest

from experiments.gpu_report import present_runs
from experiments.protocol import at_seeds, load_protocol
from hyper_retrieval.training.config import load_config
from tests.gpu_image import gpu_image_distributions, gpu_image_env
from tests.processes import REPO

PROTOCOL = REPO / "configs" / "bbir-protocol.yaml"
SCRIPT = REPO / "scripts" / "gpu_protocol.sh"


def test_the_gpu_image_refuses_what_it_lacks_and_allows_the_wheels(tmp_path):
    probe = ("import importlib, importlib.util, sys\n"
             "for name in sys.argv[1:]:\n"
             "    try:\n        importlib.import_module(name); print(name, 'ok')\n"
             "    except ModuleNotFoundError as e:\n        print(name, 'refused' if 'halted' in str(e) else e)\n"
             "print('find_spec', importlib.util.find_spec('matplotlib'))\n")
    env = {**os.environ, **gpu_image_env()}
    run = subprocess.run([sys.executable, "-c", probe, "faiss", "matplotlib", "pytrec_eval", "bm25s", "torch", "json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert run.stdout.split("\n")[:-1] == ["faiss refused", "matplotlib refused", "pytrec_eval ok", "bm25s ok",
                                           "torch ok", "json ok", "find_spec None"], run.stderr


def protocol_script():
    spec = importlib.util.spec_from_file_location("protocol_script", REPO / "scripts" / "protocol.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_seeds_name_runs_as_the_file_does_and_leave_the_file_alone():
    _, runs = load_protocol(PROTOCOL)
    by_base = {}
    for run in at_seeds(runs, [42, 43, 44, 45, 46]):
        by_base.setdefault(run.base, []).append((run.name, run.seed))
    assert by_base["multitask"] == [("multitask", 42), ("multitask-seed43", 43), ("multitask-seed44", 44),
                                    ("multitask-seed45", 45), ("multitask-seed46", 46)]
    assert by_base["hyper-cosine-sharp"][3] == ("hyper-cosine-sharp-seed45", 45)  # a one-seed entry too
    assert by_base["backbone"] == [("backbone", None)] and by_base["hyper-read-maxp"] == [("hyper-read-maxp", None)]
    seeded = {r.name: r for r in at_seeds(runs, [45])}
    assert "multitask" not in seeded and seeded["multitask-seed45"].config == "configs/bbir-multitask.yaml"
    assert seeded["hyper-seed45"].hybrid and not seeded["hyper-seed45"].primary  # fused on the first seed only
    # without --seeds the file's own lists, as before
    assert [r.name for r in runs if r.base == "prefix"] == ["prefix", "prefix-seed43", "prefix-seed44"]


def test_protocol_py_seeds_pick_entries_at_every_seed_or_single_runs(tmp_path):
    root, to = tmp_path / "root", tmp_path / "to"
    for name in ("multitask", "multitask-seed45", "hyper-seed45", "hyper-seed43", "prefix-seed45"):
        (root / name).mkdir(parents=True)
        (root / name / "protocol.json").write_text("{}")
    command = [sys.executable, "scripts/protocol.py", "collect", "--root", str(root), "--to", str(to)]
    run = subprocess.run([*command, "--seeds", "42", "45", "--only", "multitask", "hyper-seed45"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in to.iterdir()) == ["hyper-seed45", "multitask", "multitask-seed45"]
    run = subprocess.run([*command, "--seeds", "45", "--only", "nothing"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode != 0 and "no entry or run named ['nothing']" in run.stderr


def test_the_gpu_epoch_profile_is_one_epoch_with_three_dev_selections_in_bf16():
    protocol, _ = load_protocol(PROTOCOL)
    profile = protocol["profiles"]["gpu-epoch"]
    for system in ("multitask", "prefix", "hyper"):
        config = load_config(REPO / "configs" / f"bbir-{system}.yaml", profile)
        assert (config.optim.max_steps, config.optim.epochs, config.optim.mixed_precision) == (None, 1, "bf16")
        assert config.train.eval_every == config.train.save_every == 1110  # 1/3, 2/3, the end of 3,330 steps
    assert protocol_script().eval_dtype(profile) == "auto"  # bf16 where the GPU computes it faster


def test_a_command_still_running_at_the_deadline_is_stopped():
    script = protocol_script()
    handles_term = ("import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
                    "print('up', flush=True); time.sleep(60)")
    start = time.time()
    seconds, stopped = script.sh_until([sys.executable, "-c", handles_term], time.time() + 3)
    assert stopped and seconds < 30 and time.time() - start < 30
    assert script.sh_until([sys.executable, "-c", "pass"], time.time() + 60)[1] is False


def test_present_runs_finds_the_seeds_evaluated(tmp_path):
    _, runs = load_protocol(PROTOCOL)
    for name in ("hyper", "hyper-seed46", "multitask-seed45", "hyper-frozen-seed43"):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "results.json").write_text("{}")
    found = present_runs(runs, tmp_path, names=["hyper", "multitask"])
    assert [(r.name, r.seed) for r in found] == [("multitask-seed45", 45), ("hyper", 42), ("hyper-seed46", 46)]


def test_pack_refuses_a_folder_that_would_pack_itself():
    run = subprocess.run(["bash", str(SCRIPT), "--pack", "configs/pack-here"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "not git-ignored" in run.stderr
    assert not (REPO / "configs" / "pack-here").exists()


@pytest.mark.slow
def test_the_dry_run_trains_every_system_and_seed_side_by_side_and_reports_them(tmp_path):
    allowed = gpu_image_distributions()
    assert "faiss-cpu" not in allowed and "matplotlib" not in allowed  # what the image lacks, hidden below
    out = tmp_path / "out"
    image = gpu_image_env()
    env = {**os.environ, **image, "PYTHON": sys.executable, "OUT": str(out),
           "PYTHONPATH": f"{image['PYTHONPATH']}:{REPO}", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--systems", "multitask hyper", "--seeds", "42 43"],
                         env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["RESULTS.md", "gpu_protocol.tgz", "summary.log"]  # <= 8 back
    summary = (out / "summary.log").read_text()
    assert "runs done: 4/4 succeeded" in summary and "embedding cache entries" in summary

    with tarfile.open(out / "gpu_protocol.tgz") as tar:
        names = set(tar.getnames())
        tar.extractall(tmp_path / "x", filter="data")
    results = tmp_path / "x" / "results"
    for (system, seed), run_name in {("multitask", 42): "multitask", ("multitask", 43): "multitask-seed43",
                                     ("hyper", 42): "hyper", ("hyper", 43): "hyper-seed43"}.items():
        for part in ("log.jsonl", "protocol.json", "train_config.yaml"):
            assert f"./results/{run_name}/{part}" in names
        for mode in ("eval", "eval-pooled"):
            assert f"./results/{mode}/{run_name}/results.json" in names
            assert f"./results/{mode}/{run_name}/per_query.json" in names
        assert f"./logs/tails/run-{system}-{seed}.log" in names
        facts = json.loads((results / run_name / "protocol.json").read_text())
        assert facts["profile"] == "gpu-epoch" and "optim.max_steps=4" in facts["train_command"]
    assert "./results/eval/backbone/results.json" in names  # the preparation's evaluation, once
    assert not any(n.endswith((".safetensors", ".bin", ".pt")) for n in names)  # no weights
    logs = "".join(f.read_text() for f in (tmp_path / "x" / "logs").rglob("*.log"))
    assert "None in sys.modules" not in logs and "Traceback" not in logs
    phases = json.loads((results / "gpu_protocol.json").read_text())
    assert list(phases["phases"]) == ["setup", "prepare", "runs", "collect"] and phases["seeds"] == [42, 43]

    docs = tmp_path / "docs"
    report = subprocess.run([sys.executable, "scripts/protocol.py", "report", "--section", "gpu", "--root",
                             str(results), "--docs", str(docs)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]
    text = (docs / "RESULTS.md").read_text()
    assert text.count("<!-- generated by scripts/protocol.py report --section gpu: begin -->") == 1
    for system in ("multitask", "hyper"):
        assert f"| **{system}** | mean ± std (2) |" in text
        assert f"| {system} | 43 |" in text
    assert "| hyper − multitask | zero-shot |" in text and "| backbone (untrained) | – |" in text
    # the speed table: the steps each run reached, its speed, its seconds to the first step
    assert re.search(r"\| hyper-seed43 \| 4 \| [\d.]+ \| \d+ \| [\d.]+ \| no \|", text), text
    assert text == (out / "RESULTS.md").read_text()  # as the script's own report step wrote it
