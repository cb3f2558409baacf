"""scripts/gpu_checks.sh --dry-run: every step of the GPU run on the CPU, tiny inputs, importing only what the GPU
image has (tests/gpu_image.py)."""

import json
import os
import re
import subprocess
import sys

from tests.gpu_image import gpu_image_env
from tests.processes import REPO


def test_the_gpu_checks_run_on_the_cpu_with_what_the_gpu_image_has(tmp_path):
    out = tmp_path / "out"
    image = gpu_image_env()  # the image and the pack's wheels: no faiss, no matplotlib
    env = {**os.environ, **image, "PYTHON": sys.executable, "OUT": str(out),
           "PYTHONPATH": f"{image['PYTHONPATH']}:{REPO}"}
    run = subprocess.run(["bash", str(REPO / "scripts" / "gpu_checks.sh"), "--dry-run"], env=env, capture_output=True,
                         text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    logs = {name: (out / f"{name}.log").read_text()
            for name in ("eval", "train", "encode", "scale", "steps", "profile")}
    assert all(log.rstrip().endswith("rc 0") for log in logs.values())
    assert "None in sys.modules" not in run.stdout + run.stderr + "".join(logs.values())
    assert "encode_tokenized, cached token ids" in logs["eval"] and "hnsw" not in logs["eval"]  # exact kinds only
    assert "best ratio" in logs["train"]
    settings = [line.rsplit(", ", 1)[1] for line in logs["profile"].splitlines() if ", passages encoded, " in line]
    assert settings == ["mixed precision bf16", "mixed precision no"]  # trainable passages, in both precisions
    assert logs["profile"].count("Self CPU time total") == 2
    assert re.search(r"train.py alone, \d+ cores: [\d.]+ steps/s \(median of \d+ log windows after the first, "
                     r"batch 8\); launch to the first step [\d.]+ s with the caches as found, [\d.]+ s with them warm",
                     logs["steps"])
    reruns = [line for line in logs["encode"].splitlines() if line.startswith("process 0/1")]
    assert reruns == ["process 0/1: 3 shards, 0 found cached, 3 encoded" + reruns[0].split("encoded")[1],
                      "process 0/1: 3 shards, 3 found cached, 0 encoded" + reruns[1].split("encoded")[1]]
    report = json.loads((out / "scale.json").read_text())
    kinds = {(row["data"], row["kind"]): row for row in report["rows"]}
    assert set(kinds) == {(data, kind) for data in ("real", "synthetic") for kind in ("flat", "flat-torch")}
    assert all(row["recall@100"] == 1.0 for row in kinds.values())  # both exact
    assert "faiss none" in report["machine"]
