"""Never lose a run: one writer per output folder (train.py, eval.py, export.py lock it), no output inside, around or
over another run, checkpoint, model, export, evaluation or one of the command's inputs, and a run killed before its
first checkpoint, started again as train.py says, logs each step once.

The concurrent cases run two real commands: the first is started through HOLD, which pauses it right after it takes
its lock (until the test lets it go), so that the second surely meets the lock; the second must stop at once, naming
the first's pid and command, while the first is still paused.
"""

import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from test_eval_cli import load_eval_module
from test_train import (
    SAMPLE,
    read_log,
    run_train,
    snapshot,
    tiny_backbones,  # noqa: F401 (a fixture: tiny random BERTs with MiniLM's tokenizer)
    write_config,
)
from tiny import tiny_model

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}
# Runs a command (argv[1:]) with its folder lock taken and then held until the file $HOLD_UNTIL exists. On code
# without hyper_retrieval.core.folder_lock the command simply runs.
HOLD = textwrap.dedent("""
    import os, runpy, sys, time
    sys.path.insert(0, os.getcwd())
    try:
        from hyper_retrieval.core import folder_lock
    except ImportError:
        folder_lock = None
    if folder_lock is not None:
        take = folder_lock.lock_folder
        def lock_and_hold(folder, **kwargs):
            lock = take(folder, **kwargs)
            deadline = time.time() + 300
            while not os.path.exists(os.environ["HOLD_UNTIL"]) and time.time() < deadline:
                time.sleep(0.05)
            return lock
        folder_lock.lock_folder = lock_and_hold
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def lock_file(folder: Path) -> Path:
    folder = folder.resolve()
    return folder.with_name(f".{folder.name}.lock")


class Holder:
    """A command started through HOLD, its output in a file."""

    def __init__(self, tmp_path: Path, script: str, *args: str):
        self.go, self.log = tmp_path / "go", tmp_path / f"{script}.holder.log"
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", HOLD, script, *args], cwd=REPO,
                                         env={**ENV, "HOLD_UNTIL": str(self.go)}, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def wait_for_lock(self, folder: Path, timeout: float = 240) -> bool:
        """True once the command holds ``folder``'s lock (its pid in the lock file); False if it ended first."""
        deadline = time.time() + timeout
        while time.time() < deadline and self.proc.poll() is None:
            if lock_file(folder).is_file() and lock_file(folder).read_text().startswith(f"pid {self.proc.pid}:"):
                return True
            time.sleep(0.1)
        return False

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        self.go.touch()
        code = self.proc.wait(timeout=timeout)
        return code, self.log.read_text()


def run_script(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, script, *args], cwd=REPO, env=ENV, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=300)


def race(tmp_path: Path, folder: Path, first_command: list[str], second_command: list[str]) -> str:
    """Starts the first command (held once it has the lock on ``folder``), then the second; checks that the second
    stopped while the first was still held, with one line naming the first (its pid and command), then lets the first
    finish, checks it succeeded, and returns its output."""
    first = Holder(tmp_path, *first_command)
    held = first.wait_for_lock(folder)
    second = run_script(*second_command)
    first_still_held = first.proc.poll() is None
    code, output = first.finish()
    assert code == 0, output[-3000:]
    assert second.returncode != 0, "both ran: " + second.stdout[-1500:] + second.stderr[-1500:]
    assert held and first_still_held  # the second did not wait for the first to end
    last = second.stderr.strip().splitlines()[-1]
    assert "Traceback" not in second.stderr and "is being written by another process" in last, second.stderr[-2000:]
    assert f"pid {first.proc.pid}: " in last and second_command[0] in last, last
    return output


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(folder: Path) -> Path:
    """A training run's layout without training: train_config.yaml, log.jsonl, checkpoints/step_2, final/."""
    (folder / "checkpoints" / "step_2").mkdir(parents=True)
    for name in ("manifest.json", "train_state.json", "model.safetensors"):
        (folder / "checkpoints" / "step_2" / name).write_text("{}")
    (folder / "final").mkdir()
    (folder / "final" / "config.json").write_text("{}")
    (folder / "final" / "model.safetensors").write_text("weights")
    (folder / "train_config.yaml").write_text("train: {}\n")
    (folder / "log.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    return folder


# ---- one writer per folder: the lock itself

HOLD_LOCK = "import sys, time; from hyper_retrieval.core.folder_lock import lock_folder; " \
            "lock = lock_folder(sys.argv[1]); print('held', flush=True); time.sleep(300)"


def test_the_lock_names_its_holder_outlives_a_rename_and_is_taken_over_from_a_killed_one(tmp_path):
    from hyper_retrieval.core.folder_lock import FolderBusyError, lock_folder

    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out), "--marker"], cwd=REPO, env=ENV,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out.mkdir()
        out.rename(tmp_path / "out.old")  # the lock is the folder's name's, beside it: a rename does not take it
        for spelling in (out, tmp_path / "." / "out", Path(os.path.relpath(out))):
            with pytest.raises(FolderBusyError, match=rf"{re.escape(str(out))} is being written by another process "
                                                      rf"\(pid {holder.pid}: \S*python\S* -c {re.escape(str(out))} "
                                                      r"--marker\)"):
                lock_folder(spelling)
    finally:
        holder.kill()  # SIGKILL: no clean-up; the kernel releases the lock
        holder.wait()
    with lock_folder(out) as lock:  # taken over, never trusted: the file now names this process
        assert lock_file(out).read_text().startswith(f"pid {os.getpid()}: ")
        with lock_folder(out):  # re-entrant within one process
            pass
        assert lock.path == lock_file(out)
    assert lock_file(out).is_file()  # never deleted (two processes could then each lock "the" file)

    def refuse() -> None:
        raise ValueError("not here")

    with pytest.raises(ValueError, match="not here"):  # checked first: no lock file where the command may not write
        lock_folder(tmp_path / "model" / "out", check=refuse)
    assert not (tmp_path / "model").exists()


# ---- no output inside, around or over another run, checkpoint, model, export, evaluation or an input

def test_output_guards_of_every_command(tmp_path):
    from hyper_retrieval.core.run_folders import (
        EVALUATION,
        RunFolderError,
        check_export_target,
        check_output_folder,
        training_output_plan,
    )

    run = fake_run(tmp_path / "run")
    evaluation = tmp_path / "eval"
    (evaluation / "runs").mkdir(parents=True)
    (evaluation / "results.json").write_text("{}")
    export = tmp_path / "hub"
    export.mkdir()
    for name in ("config.json", "handler.py", "README.md", "model.safetensors"):
        (export / name).write_text("{}")
    data = tmp_path / "data" / "qasc"
    data.mkdir(parents=True)

    def plan(out, **kw):
        return training_output_plan(out, resume=kw.pop("resume", False), move_aside=kw.pop("move_aside", False),
                                    config=kw.pop("config", "a: 1\n"), inputs={"data.collections": [data]})

    refused = {  # train.py
        "inside final/": (lambda: plan(run / "final" / "inner"), "part of the training run"),
        "inside a checkpoint": (lambda: plan(run / "checkpoints" / "step_2" / "x"), "a training checkpoint"),
        "inside another run": (lambda: plan(run / "inner"), "a run never goes inside another"),
        "inside an evaluation": (lambda: plan(evaluation / "x"), "an evaluation"),
        "an export": (lambda: plan(export, move_aside=True), "is an export, not a training run"),
        "holding its data": (lambda: plan(tmp_path / "data"), "holds data.collections"),
        "its data": (lambda: plan(data, resume=True), "is data.collections"),
        "best/ and log.jsonl": (lambda: plan(best_and_log), "another run's best/, log.jsonl and no checkpoint"),
        "another config": (lambda: plan(killed, config="a: 2\n"), "log.jsonl, train_config.yaml of another config"),
        "an evaluation below": (lambda: plan(holding_eval), "sub/eval/ (an evaluation)"),
        # eval.py
        "eval: --out is --data": (lambda: check_output_folder(data, "--out", EVALUATION, {"--data": [data]}),
                                  "is --data"),
        "eval: a run": (lambda: check_output_folder(run, "--out", EVALUATION), "is a training run"),
        "eval: inside best/": (lambda: check_output_folder(run / "best" / "e", "--out", EVALUATION), "part of"),
        "eval: best/ to be": (lambda: check_output_folder(run / "best", "--out", EVALUATION), "part of"),
        "eval: holding one": (lambda: check_output_folder(tmp_path, "--out", EVALUATION), "holds"),
        # export.py
        "export: --results": (lambda: check_export_target(evaluation, run / "final", {"--results": [evaluation]}),
                              "is --results"),
        "export: holding --baseline": (lambda: check_export_target(tmp_path / "x", run / "final",
                                                                   {"--baseline": [tmp_path / "x" / "bm25"]}),
                                       "holds --baseline"),
        "export: an evaluation": (lambda: check_export_target(evaluation, run / "final"), "is an evaluation"),
        "export: inside an export": (lambda: check_export_target(export / "sub", run / "final"), "an export"),
    }
    best_and_log = tmp_path / "best_and_log"
    (best_and_log / "best").mkdir(parents=True)
    (best_and_log / "log.jsonl").write_text('{"step": 1}\n')
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "train_config.yaml").write_text("a: 1\n")
    (killed / "log.jsonl").write_text('{"step": 1}\n')
    holding_eval = tmp_path / "holding"
    (holding_eval / "sub" / "eval" / "runs").mkdir(parents=True)
    (holding_eval / "sub" / "eval" / "results.json").write_text("{}")
    (tmp_path / "x" / "bm25").mkdir(parents=True)
    before = snapshot(tmp_path)
    for case, (call, message) in refused.items():
        with pytest.raises(RunFolderError, match=re.escape(message)):
            call()
            pytest.fail(case)
    assert snapshot(tmp_path) == before
    # what each command may do
    assert plan(tmp_path / "new") == "fresh" and plan(run, resume=True) == "resume"
    assert plan(best_and_log, move_aside=True) == "move-aside" and plan(holding_eval, move_aside=True) == "move-aside"
    assert plan(killed) == "restart"  # this very run (its config word for word), no checkpoint: it starts over
    check_output_folder(run / "eval", "--out", EVALUATION)  # beside a run's artefacts
    check_output_folder(evaluation, "--out", EVALUATION)  # its own earlier evaluation (check_output_dir decides)
    check_export_target(export, run / "final", {"--results": [evaluation]})  # an earlier export: --overwrite
    check_export_target(run / "hub", run / "final", {"--results": [evaluation]})


@pytest.fixture(scope="module")
def published(tmp_path_factory, minilm_path):
    """A tiny saved model (MiniLM's tokenizer), its evaluation and BM25's, as eval.py writes them."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("published")
    tiny_model().save_pretrained(root / "final")
    AutoTokenizer.from_pretrained(minilm_path).save_pretrained(root / "final")
    eval_cli = load_eval_module()
    eval_cli.main(["--model", str(root / "final"), "--data", str(SAMPLE / "ropes"), "--out", str(root / "eval"),
                   "--max-length", "64", "--cache-dir", "", "--no-progress", "--dtype", "float32"])
    eval_cli.main(["--model", "bm25", "--data", str(SAMPLE / "ropes"), "--out", str(root / "eval-bm25"),
                   "--no-progress"])
    return root


@pytest.mark.parametrize("option", ["--results", "--baseline"])
def test_export_never_writes_over_its_own_input(published, option):
    """`export.py --results DIR --out DIR --overwrite` (or --baseline) deleted the evaluation; now refused."""
    evaluation = published / ("eval" if option == "--results" else "eval-bm25")
    before = snapshot(evaluation)
    args = ["--model", str(published / "final"), option, str(evaluation), "--out", str(evaluation), "--overwrite"]
    with pytest.raises(SystemExit, match=rf"export.py: --out {evaluation} is {option} {evaluation}, an input"):
        load_script("export").main(args)
    assert snapshot(evaluation) == before


def test_eval_and_encode_never_write_into_an_input_or_a_model(published, tmp_path):
    eval_cli = load_eval_module()
    data = tmp_path / "ropes"
    shutil.copytree(SAMPLE / "ropes", data)
    before, data_before = snapshot(published), snapshot(data)
    for out, message in ((data, "is --data/--zero-shot"), (published / "final", "is --model"),
                         (published / "final" / "eval", "lies inside --model")):
        with pytest.raises(SystemExit, match=f"eval.py: --out {out.resolve()} {message}"):
            eval_cli.main(["--model", str(published / "final"), "--data", str(data), "--out", str(out),
                           "--max-length", "64", "--cache-dir", "", "--no-progress"])
    with pytest.raises(SystemExit, match="is an evaluation"):  # a comparison never goes over an evaluation
        eval_cli.main(["--compare", str(published / "eval"), "--out", str(published / "eval-bm25")])
    result = run_script("encode.py", "--model", str(published / "final"), "--corpus", str(SAMPLE / "ropes"),
                        "--index", "ivf", "--index-out", str(published / "final" / "ropes.ivf"))
    assert result.returncode == 2 and "--index-out" in result.stderr and "lies inside --model" in result.stderr
    assert snapshot(published) == before and snapshot(data) == data_before  # not even a lock file


# ---- train.py: runs never nest, a fresh start never mixes into another run's traces

@pytest.mark.parametrize("inside", ["final", "checkpoints/step_2"])
def test_a_run_inside_another_runs_artefacts_is_refused(tiny_backbones, tmp_path, inside):  # noqa: F811
    outer = fake_run(tmp_path / "outer")
    before = snapshot(outer)
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2},
                          train={"output_dir": str(outer / inside / "inner")})
    result = run_train(config, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"train.output_dir {outer / inside / 'inner'} lies inside {outer / inside}" in result.stderr
    assert snapshot(outer) == before


def test_a_fresh_run_over_another_runs_best_and_log_is_refused(tiny_backbones, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2})
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "config.json").write_text('{"another": "model"}')
    (run / "log.jsonl").write_text('{"step": 1, "loss/total": 9.0}\n{"step": 30, "dev/ndcg@10": 0.5}\n')
    before = snapshot(run)
    result = run_train(config, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds another run's best/, log.jsonl and no checkpoint to continue from" in result.stderr
    assert "--move-aside" in result.stderr
    assert snapshot(run) == before


def test_a_run_killed_before_its_first_checkpoint_and_started_again_logs_each_step_once(tiny_backbones,  # noqa: F811
                                                                                          tmp_path):
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2000}, train={"save_every": 1000})
    log = tmp_path / "run" / "log.jsonl"
    with open(tmp_path / "first.log", "w") as output:
        first = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(config)], cwd=REPO, env=ENV,
                                 stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and (not log.exists() or log.read_text().count("\n") < 3):
        time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no checkpoint saved
    first.wait()
    assert len(read_log(log.parent)) >= 3 and not (tmp_path / "run" / "checkpoints").exists()
    resumed = run_train(config, "--resume", check=False)  # what a user tries first
    assert resumed.returncode != 0 and "start without --resume" in resumed.stderr
    again = run_train(config, "--stop-after-steps", "3")  # as the message says
    assert "starting over from step 0" in again.stdout + again.stderr
    assert [r["step"] for r in read_log(log.parent)] == [1, 2, 3]


# ---- one writer per folder: two real commands at once

def test_two_trainings_on_one_run_folder(tiny_backbones, tmp_path):  # noqa: F811
    """Fresh, then --resume: the second train.py stops at once naming the first; the first then runs alone and its
    log holds each step once."""
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2})
    run = tmp_path / "run"
    for args, steps in (([], [1, 2]), (["--resume", "optim.max_steps=4"], [1, 2, 3, 4])):
        (tmp_path / "go").unlink(missing_ok=True)
        command = ["train.py", "--config", str(config), *args]
        race(tmp_path, run, command, command)
        assert [r["step"] for r in read_log(run)] == steps


def test_two_exports_into_one_new_folder(published, tmp_path):
    out = tmp_path / "hub"
    command = ["export.py", "--model", str(published / "final"), "--results", str(published / "eval"), "--out",
               str(out)]
    assert f"exported to {out}" in race(tmp_path, out, command, command)
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "handler.py", "README.md", "adapter/hyper_prompt.safetensors",
            "tokenizer.json"} <= files  # one whole export: weights, config, code, card and adapter


def test_two_evaluations_into_one_folder(published, tmp_path):
    out = tmp_path / "eval"
    base = ["eval.py", "--model", "bm25", "--data", str(SAMPLE / "ropes"), "--out", str(out), "--no-progress"]
    race(tmp_path, out, [*base, "--bm25-k1", "0.9"], [*base, "--bm25-k1", "1.2"])
    assert json.loads((out / "results.json").read_text())["settings"]["bm25_k1"] == 0.9  # the first's, kept


def test_replace_folder_keeps_one_whole_copy_whatever_happens(tmp_path, monkeypatch):
    """The new folder replaces the old one; if it cannot be put in place, the old one is back where it was."""
    from hyper_retrieval.core.atomic_files import replace_folder

    folder, finished = tmp_path / "step_4", tmp_path / ".partial_step_4"
    folder.mkdir()
    (folder / "model.safetensors").write_text("old")
    finished.mkdir()
    (finished / "model.safetensors").write_text("new")
    real_replace = os.replace

    def failing(src, dst):
        if Path(src) == finished:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError, match="No space"):
        replace_folder(finished, folder)
    assert (folder / "model.safetensors").read_text() == "old"
    monkeypatch.setattr(os, "replace", real_replace)
    replace_folder(finished, folder)
    assert (folder / "model.safetensors").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_4"]
