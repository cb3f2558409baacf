"""train.py end to end on tiny random backbones and the bundled sample: learning, resuming, stopping, failing."""

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from processes import torchrun_two
from safetensors.torch import load_file
from tiny import tiny_backbone_config
from transformers import AutoTokenizer, BertForMaskedLM, BertModel

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "data" / "sample"


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory, minilm_path) -> dict[str, Path]:
    """Random hidden-32 BERTs saved with MiniLM's tokenizer: a plain encoder (dense) and one with an MLM head."""
    root = tmp_path_factory.mktemp("backbones")
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    folders = {}
    for kind, cls in (("dense", BertModel), ("sparse", BertForMaskedLM)):
        torch.manual_seed(0)
        cls(tiny_backbone_config()).save_pretrained(root / kind)
        tokenizer.save_pretrained(root / kind)
        folders[kind] = root / kind
    return folders


def write_config(tmp_path: Path, backbone: Path, representation: str = "dense", **sections) -> Path:
    config = {
        "model": {"backbone": str(backbone), "representation": representation, "pooling": "mean",
                  "normalize": representation == "dense", "prompt": "hyper", "pool_size": 3, "num_virtual_tokens": 2,
                  "share_encoders": True, "freeze_passage_encoder": False,
                  "max_query_length": 32, "max_passage_length": 64},
        "data": {"collections": [{"path": str(SAMPLE / "qasc"), "max_queries": 24},
                                 {"path": str(SAMPLE / "vitaminc"), "max_queries": 24}],
                 "negatives": "bm25", "num_negatives": 1, "negatives_cache_dir": str(tmp_path / "negatives"),
                 "dev_split": None},
        "optim": {"backbone_lr": 1e-3, "prompt_lr": 1e-2, "max_steps": 30, "warmup_steps": 0},
        "loss": {"contrastive_temperature": 0.1, "cpr_weight": 0.01, "flops_weight": 1e-3, "flops_warmup_steps": 5},
        "train": {"seed": 3, "batch_size": 8, "output_dir": str(tmp_path / "run"), "save_every": 10,
                  "embedding_cache_dir": str(tmp_path / "embedding_cache"),
                  "log_every": 1},
    }
    for section, values in sections.items():
        config[section].update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_train(config: Path, *args: str, check: bool = True, **popen) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(REPO / "train.py"), "--config", str(config), *args], cwd=REPO,
                            env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, **popen)
    if check:
        assert result.returncode == 0, result.stderr[-4000:]
    return result


def read_log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.parametrize("representation", ["dense", "sparse"])
def test_training_lowers_the_loss_and_exports(representation, tiny_backbones, tmp_path):
    config = write_config(tmp_path, tiny_backbones[representation], representation,
                          data={"dev_split": "dev"}, train={"eval_every": 30})
    run_train(config)
    run = tmp_path / "run"
    log = [r for r in read_log(run) if "loss/total" in r]
    assert [r["step"] for r in log] == list(range(1, 31))
    assert 0 < log[0]["startup_s"] < 600 and not any("startup_s" in r for r in log[1:])  # launch to the first step
    dev = [r for r in read_log(run) if "dev/ndcg@10" in r]
    assert [r["step"] for r in dev] == [30] and 0 <= dev[0]["dev/ndcg@10"] <= 1
    first, last = mean(r["loss/contrastive"] for r in log[:5]), mean(r["loss/contrastive"] for r in log[-5:])
    assert last < 0.8 * first, (first, last)
    assert all(r["loss/cpr_push"] > 0 for r in log)  # CPR is on and logged separately
    # the routing diagnostics of every log window (hyper_retrieval.evaluation.routing), from the first logged step on
    assert all(0 <= r["routing/task_mi"] <= 1 and 1 / 3 <= r["routing/top_share"] <= 1 and 0 <= r["routing/entropy"]
               <= 1 and 0 <= r["routing/common_variance"] <= 1 for r in log)
    if representation == "sparse":
        assert log[0]["loss/flops"] == 0 and all(r["loss/flops"] > 0 for r in log[1:])  # linear warm-up from 0
    else:
        assert all(r["loss/flops"] == 0 for r in log)
    # the optimizer's groups really carry the two learning rates, decayed linearly to 0 together
    assert log[0]["lr/hyper_prompt"] / log[0]["lr/backbone"] == pytest.approx(10)
    assert log[0]["lr/backbone"] == pytest.approx(1e-3 * 29 / 30) and log[-1]["lr/backbone"] == 0
    for folder in ("final", "best", "adapter"):
        assert (run / folder).is_dir(), folder
    assert (run / "final" / "model.safetensors").is_file() and (run / "final" / "config.json").is_file()


def test_frozen_task_prompt_oracle_trains_its_adapter_alone(tiny_backbones, tmp_path):
    """model.prompt=task with the query backbone frozen: a prompt per training task, chosen by the task id in training
    and in the dev evaluation; the backbone is untouched, so the run's adapter loads onto the plain backbone."""
    from modeling_hyper import HyperRetrieverModel

    backbone = tiny_backbones["dense"]
    config = write_config(tmp_path, backbone, model={"prompt": "task", "freeze_query_backbone": True,
                                                     "share_encoders": False, "freeze_passage_encoder": True},
                          data={"dev_split": "dev"}, optim={"max_steps": 10}, loss={"cpr_weight": 0.0},
                          train={"eval_every": 10})
    run_train(config)
    run = tmp_path / "run"
    log = [r for r in read_log(run) if "loss/total" in r]
    assert all(r["routing/task_mi"] == pytest.approx(1.0) for r in log)  # the prompt is the task: all information
    final = HyperRetrieverModel.from_pretrained(run / "final")
    assert final.config.hyper_prompt["task_names"] == ["qasc", "vitaminc"]
    plain = BertModel.from_pretrained(backbone).state_dict()
    assert all(torch.equal(v, plain[k]) for k, v in final.query_encoder.state_dict().items())
    queries = ["which gas do plants take in", "the film grossed over a million"]
    attention = final.prompt_attention(queries, task=["vitaminc", "ropes"])
    assert attention.tolist() == [[0.0, 1.0], [0.5, 0.5]]  # its task's prompt; another task: the pool's mean
    base = HyperRetrieverModel.from_backbone(str(backbone))
    base.load_adapter(run / "adapter", adapter_name="oracle")
    for task in ("qasc", "vitaminc", None):
        assert (base.encode_queries(queries, task=task) == final.encode_queries(queries, task=task)).all()
    assert not (final.encode_queries(queries, task="qasc") == final.encode_queries(queries, task="vitaminc")).all()


def test_accumulation_checkpointing_bf16_and_frozen_passages(tiny_backbones, tmp_path):
    config = write_config(
        tmp_path, tiny_backbones["dense"], data={"sampling": "homogeneous"},
        model={"share_encoders": False, "freeze_passage_encoder": True},
        optim={"max_steps": 3, "grad_accum": 2, "gradient_checkpointing": True, "mixed_precision": "bf16"},
    )
    stopped = run_train(config, "--stop-after-steps", "2")  # bf16 autocast on the CPU, through Accelerate
    assert "mixed precision bf16 (from the config: bf16)" in stopped.stdout + stopped.stderr
    run_train(config, "--resume")
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3]  # optimizer steps, each over 2 micro-batches; resumed after 2
    terms = [v for r in log for k, v in r.items() if k.startswith("loss/")]
    assert len(terms) >= 3 * 3 and all(math.isfinite(v) for v in terms)  # contrastive, CPR, total, ... all finite
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    initial = load_file(tiny_backbones["dense"] / "model.safetensors")
    name = "encoder.layer.0.attention.self.query.weight"
    assert torch.equal(final[f"passage_encoder.{name}"], initial[name])  # frozen passage encoder
    assert not torch.equal(final[f"query_encoder.{name}"], initial[name])  # trained query encoder


def test_a_sparse_model_trains_on_its_frozen_passage_table(tiny_backbones, tmp_path):
    """A sparse model whose passage encoder is frozen: the training corpora's CSR vectors are encoded once, cached,
    and gathered on the device at every step."""
    config = write_config(tmp_path, tiny_backbones["sparse"], "sparse",
                          model={"share_encoders": False, "freeze_passage_encoder": True}, optim={"max_steps": 4})
    run_train(config)
    log = [r for r in read_log(tmp_path / "run") if "loss/total" in r]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(math.isfinite(r["loss/contrastive"]) for r in log)
    assert len(list((tmp_path / "embedding_cache").glob("*.vectors"))) == 2  # the two training corpora's vectors


def test_maxp_training_scores_passages_by_their_best_window(tiny_backbones, tmp_path):
    """model.passage_windows: max reads every window of the sample passages (32 tokens a window), in training and
    dev scoring."""
    config = write_config(
        tmp_path, tiny_backbones["dense"],
        model={"share_encoders": False, "freeze_passage_encoder": True, "max_passage_length": 32,
               "passage_windows": "max", "passage_window_stride": 16},
        data={"collections": [{"path": str(SAMPLE / "ropes"), "max_queries": 24},
                              {"path": str(SAMPLE / "qasc"), "max_queries": 24}], "dev_split": "dev"},
        optim={"max_steps": 4}, train={"eval_every": 4},
    )
    run_train(config)
    log = read_log(tmp_path / "run")
    assert all(math.isfinite(r["loss/contrastive"]) for r in log if "loss/contrastive" in r)
    assert any("dev/ndcg@10" in r for r in log)
    keys = [json.loads(p.read_text())["key"] for p in (tmp_path / "embedding_cache").glob("*.vectors/manifest.json")]
    assert {"mode": "max", "stride": 16} in [k.get("windows") for k in keys]  # window vectors, cached

    shared = write_config(tmp_path / "shared", tiny_backbones["dense"], model={"passage_windows": "max"})
    result = run_train(shared, check=False)
    assert result.returncode != 0 and "model.passage_windows: 'max' needs model.freeze_passage_encoder" in result.stderr


@pytest.mark.parametrize(("yaml_precision", "expected"), [(None, "bf16 (from the launcher)"),
                                                         ("no", "no (from the config: no)")])
def test_the_launchers_mixed_precision_wins_unless_the_yaml_sets_it(tiny_backbones, tmp_path, yaml_precision,
                                                                      expected):
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2, "mixed_precision": yaml_precision})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1", "--num_machines",
              "1", "--mixed_precision", "bf16", "--dynamo_backend", "no", str(REPO / "train.py"), "--config",
              str(config)]
    result = subprocess.run(launch, cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"mixed precision {expected}" in result.stdout + result.stderr


def test_dense_negatives_mined_with_the_initial_model(tiny_backbones, tmp_path):
    config = write_config(tmp_path, tiny_backbones["dense"], data={"negatives": "dense", "num_negatives": 2},
                          optim={"max_steps": 3})
    run_train(config)
    cached = list((tmp_path / "negatives").glob("*-model-*.json"))
    assert len(cached) == 2  # one per collection, keyed by the model
    for path in cached:
        stored = json.loads(path.read_text())
        assert stored["key"]["model"] == str(tiny_backbones["dense"])
        assert all(len(negs) == 100 for negs in stored["negatives"].values())  # depth 100, gold removed


def test_stopped_then_resumed_run_ends_with_the_same_weights(tiny_backbones, tmp_path):
    straight = write_config(tmp_path / "a", tiny_backbones["dense"], optim={"max_steps": 12}, train={"save_every": 4})
    run_train(straight)
    resumed = write_config(tmp_path / "b", tiny_backbones["dense"], optim={"max_steps": 12}, train={"save_every": 4})
    stopped = run_train(resumed, "--stop-after-steps", "6")
    assert "stopped at step 6" in stopped.stdout + stopped.stderr
    assert not (tmp_path / "b" / "run" / "final").exists()
    checkpoints = sorted(p.name for p in (tmp_path / "b" / "run" / "checkpoints").iterdir())
    assert checkpoints == ["step_4", "step_6"]  # atomically renamed, no partial folder left
    run_train(resumed, "--resume")
    a = load_file(tmp_path / "a" / "run" / "final" / "model.safetensors")
    b = load_file(tmp_path / "b" / "run" / "final" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], atol=1e-6, rtol=1e-5, msg=name)
    steps = [r["step"] for r in read_log(tmp_path / "b" / "run")]
    assert steps == list(range(1, 13))


@pytest.fixture(scope="module")
def straight_and_stopped(tiny_backbones, tmp_path_factory):
    """A 12-step run, and the same run stopped after step 8 (checkpoints step_4 and step_8)."""
    root = tmp_path_factory.mktemp("resume")
    straight = write_config(root / "straight", tiny_backbones["dense"], optim={"max_steps": 12},
                            train={"save_every": 4})
    run_train(straight)
    stopped = write_config(root / "stopped", tiny_backbones["dense"], optim={"max_steps": 12}, train={"save_every": 4})
    run_train(stopped, "--stop-after-steps", "8")
    return load_file(root / "straight" / "run" / "final" / "model.safetensors"), root / "stopped"


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:  # one bit flipped in the middle
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1:])


@pytest.mark.parametrize(("damaged", "how"), [
    ("model.safetensors", "flip"), ("optimizer.bin", "truncate"), ("random_states_0.pkl", "truncate"),
    ("rng_0.safetensors", "flip"), ("train_state.json", "truncate"), ("train_tensors.safetensors", "truncate"),
    ("manifest.json", "truncate"), ("an empty newer checkpoint", ""),
])
def test_resume_falls_back_past_a_damaged_checkpoint(straight_and_stopped, tmp_path, damaged, how):
    """Whatever file of the newest checkpoint is damaged, --resume says so, takes the one before, and ends with the
    weights of the uninterrupted run, bit for bit; the log has every step once."""
    expected, stopped = straight_and_stopped
    shutil.copytree(stopped, tmp_path / "copy")
    config = tmp_path / "copy" / "config.yaml"
    config.write_text(config.read_text().replace(str(stopped), str(tmp_path / "copy")))
    checkpoints = tmp_path / "copy" / "run" / "checkpoints"
    if damaged == "an empty newer checkpoint":
        (checkpoints / "step_99").mkdir()
        fallback, skipped = "step_8", "step_99"
    else:
        corrupt(checkpoints / "step_8" / damaged, how)
        fallback, skipped = "step_4", "step_8"
    result = run_train(config, "--resume")
    output = result.stdout + result.stderr
    assert f"skipped {checkpoints / skipped}" in output and f"resumed from {checkpoints / fallback}" in output
    got = load_file(tmp_path / "copy" / "run" / "final" / "model.safetensors")
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in expected)
    assert [r["step"] for r in read_log(tmp_path / "copy" / "run")] == list(range(1, 13))


@pytest.mark.parametrize("name", ["random_states_0.pkl", "custom_checkpoint_0.pkl", "optimizer.bin"])
def test_resume_never_unpickles_code_from_a_checkpoint(straight_and_stopped, tmp_path, name):
    """A pickle with a side effect in a checkpoint, even with a manifest that vouches for it, is never run: accelerate's
    RNG file is read without code (our RNG file decides), and an unknown registered-object pickle or an optimizer
    state that fails the safe load skips the checkpoint (no traceback)."""
    _, stopped = straight_and_stopped
    shutil.copytree(stopped, tmp_path / "copy")
    config = tmp_path / "copy" / "config.yaml"
    config.write_text(config.read_text().replace(str(stopped), str(tmp_path / "copy")))
    newest = tmp_path / "copy" / "run" / "checkpoints" / "step_8"
    marker = tmp_path / "code-ran"

    class SideEffect:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"step": 8, "payload": SideEffect()}, newest / name)
    manifest = json.loads((newest / "manifest.json").read_text())
    data = (newest / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (newest / "manifest.json").write_text(json.dumps(manifest))
    output = run_train(config, "--resume").stdout
    assert not marker.exists()
    if name == "random_states_0.pkl":
        assert f"resumed from {newest}" in output
    else:
        assert f"skipped {newest}" in output and "resumed from" in output


def copy_run(source: Path, target: Path) -> Path:
    """A copy of a test run's folder (config.yaml and run/), its config pointing at the copy."""
    shutil.copytree(source, target)
    config = target / "config.yaml"
    config.write_text(config.read_text().replace(str(source), str(target)))
    return config


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below folder -> its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_fresh_run_over_a_finished_one_is_refused_and_move_aside_keeps_it(straight_and_stopped, tmp_path):
    _, stopped = straight_and_stopped
    finished = stopped.parent / "straight"
    config = copy_run(finished, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    before = snapshot(run)
    result = run_train(config, "optim.max_steps=2", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds a training run (checkpoints/step_8, checkpoints/step_12, final/)" in result.stderr
    assert "--resume" in result.stderr and "--move-aside" in result.stderr
    assert snapshot(run) == before  # nothing pruned, truncated or rewritten

    moved = run_train(config, "optim.max_steps=2", "--move-aside")
    aside = [p for p in (tmp_path / "copy").iterdir() if p.name.startswith("run.old-")]
    assert len(aside) == 1 and f"moved the earlier run to {aside[0]}" in moved.stdout + moved.stderr
    assert snapshot(aside[0]) == before  # the old run, whole, beside the new one
    assert [r["step"] for r in read_log(run) if "loss/total" in r] == [1, 2]


@pytest.mark.parametrize("why", ["every checkpoint damaged", "the config changed"])
def test_resume_with_no_usable_checkpoint_stops_and_changes_nothing(straight_and_stopped, tmp_path, why):
    _, stopped = straight_and_stopped
    config = copy_run(stopped, tmp_path / "copy")
    run = tmp_path / "copy" / "run"
    overrides = []
    if why == "every checkpoint damaged":
        for step in ("step_4", "step_8"):
            corrupt(run / "checkpoints" / step / "manifest.json", "truncate")
    else:
        overrides = ["model.pool_size=5"]  # the saved tensors no longer fit the model
    before = snapshot(run)
    result = run_train(config, "--resume", *overrides, check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "no usable checkpoint" in result.stderr and "nothing was changed" in result.stderr
    for step in ("step_8", "step_4"):  # each named, with why it was skipped
        assert f"skipped {run / 'checkpoints' / step}" in result.stderr
    assert snapshot(run) == before


def test_resume_without_any_checkpoint_is_an_error(tiny_backbones, tmp_path):
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2})
    result = run_train(config, "--resume", check=False)
    assert result.returncode != 0 and "no checkpoint in" in result.stderr and "start without --resume" in result.stderr
    assert not (tmp_path / "run" / "log.jsonl").exists()


def test_sigterm_saves_a_checkpoint_and_resume_finishes(tiny_backbones, tmp_path):
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"max_steps": 2000}, train={"save_every": 1000})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--config", str(config)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    log = tmp_path / "run" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output[-3000:]
    assert "stopped at step" in output and "SIGTERM" in output
    checkpoints = list((tmp_path / "run" / "checkpoints").iterdir())
    assert len(checkpoints) == 1 and checkpoints[0].name.startswith("step_")
    stopped_at = int(checkpoints[0].name.removeprefix("step_"))
    assert (checkpoints[0] / "model.safetensors").is_file()
    resumed = run_train(config, "--resume", "optim.max_steps=2000", "train.save_every=1000",
                        f"--stop-after-steps={stopped_at + 2}")
    assert f"resumed from {checkpoints[0]} at step {stopped_at}" in resumed.stdout + resumed.stderr


def test_non_finite_loss_stops_with_the_last_good_checkpoint(tiny_backbones, tmp_path):
    config = write_config(tmp_path, tiny_backbones["dense"], optim={"backbone_lr": 1e30, "prompt_lr": 1e30},
                          train={"save_every": 1})
    result = run_train(config, check=False)
    assert result.returncode != 0
    assert "non-finite loss at step" in result.stderr
    message = result.stderr[result.stderr.index("non-finite loss"):]
    good = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert good and str(good[-1]) in message
    assert not (tmp_path / "run" / "final").exists()


def test_bad_config_fails_before_training(tiny_backbones, tmp_path):
    config = write_config(tmp_path, tiny_backbones["dense"])
    result = run_train(config, "optim.learning_rate=0.1", check=False)
    assert result.returncode != 0 and "optim.learning_rate" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_two_cpu_processes_train_with_ddp(tiny_backbones, tmp_path):
    """torchrun with 2 processes: DDP needs every trainable parameter in the loss (the unused pooler broke it)."""
    config = write_config(tmp_path, tiny_backbones["dense"], data={"sampling": "homogeneous"},
                          optim={"max_steps": 4}, train={"batch_size": 4, "save_every": 2})
    torchrun_two(REPO / "train.py", "--config", str(config), ACCELERATE_USE_CPU="1")
    log = read_log(tmp_path / "run")
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert log[0]["queries_per_s"] > 0 and (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert all("routing/top_share" in r for r in log)  # the routing window gathers both processes' queries
    # the synthesizer's running statistics were updated (averaged across processes) and saved
    from safetensors.torch import load_file

    state = load_file(tmp_path / "run" / "final" / "model.safetensors")
    assert state["hyper_prompt.synthesizer.num_updates"] == 4 and state["hyper_prompt.synthesizer.running_mean"].any()


def test_keep_freed_memory_applies_on_glibc():
    # In a child process: it changes malloc for the whole process. This project's machines run glibc Linux.
    code = "from hyper_retrieval.training.malloc_settings import keep_freed_memory; assert keep_freed_memory() is True"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
