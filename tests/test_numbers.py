"""Numbers that are numbers (issue 32): every float flag and YAML value is finite and in its range, YAML 1.1's base-60
and octal numbers are refused, and a config that is not UTF-8, has a list for a key or nests absurdly deep ends in
one line naming the file; a refine factor is an integer >= 1, checked when the index is made or loaded."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli_validation import refused
from test_eval_cli import load_eval_module

from hyper_retrieval.search.index import DenseIndex
from hyper_retrieval.training.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[1]
DATA = "data:\n  collections: [{path: BeIR/scifact}]\n"  # a Hub id: not looked for on disk; indented lines follow


@pytest.fixture(scope="module")
def eval_cli():
    return load_eval_module()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(("flags", "message"), [
    (["--bm25-k1", "inf"], "argument --bm25-k1: expected a number in [0, 100], got inf"),
    (["--bm25-k1=-inf"], "argument --bm25-k1: expected a number in [0, 100], got -inf"),
    (["--bm25-k1", "nan"], "argument --bm25-k1: expected a number in [0, 100], got nan"),
    (["--bm25-k1", "1e308"], "argument --bm25-k1: expected a number in [0, 100], got 1e308"),
    (["--bm25-k1", "1e400"], "argument --bm25-k1: expected a number in [0, 100], got 1e400"),  # overflows to inf
])
def test_a_float_flag_that_is_not_finite_or_absurd_is_refused(eval_cli, capsys, tmp_path, flags, message):
    code, line = refused(eval_cli, capsys, ["--model", "bm25", "--data", "nowhere", "--out", str(tmp_path / "o"),
                                            *flags])
    assert code == 2 and line.endswith(message), line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("yaml_text", "message"), [
    ("bm25_k1: .inf\n", "eval.yaml: argument --bm25-k1: expected a number in [0, 100], got inf"),
    ("bm25_k1: -.inf\n", "eval.yaml: argument --bm25-k1: expected a number in [0, 100], got -inf"),
    ("bm25_k1: 1.0e+308\n", "eval.yaml: argument --bm25-k1: expected a number in [0, 100], got 1e+308"),
    ("bm25_k1: 1:30\n", "eval.yaml:3: 1:30 is a base-60 number in YAML 1.1 (read as 90)"),
    ("k: 012\n", "eval.yaml:3: 012 is an octal number in YAML 1.1 (read as 10)"),
    (b"split: caf\xe9\n", "eval.yaml:3: not UTF-8 text (byte 0xe9 at offset"),
    ("? [k, 1]\n: 10\n", "eval.yaml:3: a key that is a list (a YAML complex key)"),
    ("{k: 1}: 10\n", "eval.yaml:3: a key that is a mapping (a YAML complex key)"),
    ("split: " + nested(100) + "\n", "eval.yaml:3: lists and mappings nested more than 64 deep"),
    ("split: " + nested(5000) + "\n", "eval.yaml:3: lists and mappings nested more than 64 deep"),
])
def test_a_bad_number_or_shape_in_an_eval_yaml_is_one_line_naming_the_file(eval_cli, capsys, tmp_path, yaml_text,
                                                                           message):
    config = tmp_path / "eval.yaml"
    head = "model: bm25\ndata: [x]\n"
    config.write_bytes(head.encode() + yaml_text if isinstance(yaml_text, bytes) else (head + yaml_text).encode())
    code, line = refused(eval_cli, capsys, ["--config", str(config), "--out", str(tmp_path / "o")])
    assert code == 2 and message in line, line
    assert len(line) < 300 and not (tmp_path / "o").exists()


@pytest.mark.parametrize(("body", "message"), [
    ("optim:\n  backbone_lr: .nan\n", r"run\.yaml: optim\.backbone_lr: expected a finite number, got nan"),
    ("optim:\n  prompt_lr: -.inf\n", r"run\.yaml: optim\.prompt_lr: expected a finite number, got -inf"),
    ("  bm25_b: 1.5\n", r"run\.yaml: data\.bm25_b: expected a value in \[0, 1\], got 1\.5"),
    ("  bm25_k1: 1e308\n", r"run\.yaml: data\.bm25_k1: expected a value in \[0, 100\], got 1e\+308"),
    ("optim:\n  warmup_ratio: 2\n", r"run\.yaml: optim\.warmup_ratio: expected a value in \[0, 1\], got 2"),
    ("optim:\n  backbone_lr: 1:30\n", r"run\.yaml:4: 1:30 is a base-60 number in YAML 1\.1 \(read as 90\)"),
    ("loss:\n  cpr_weight: 1:30.5\n", r"run\.yaml:4: 1:30\.5 is a base-60 number in YAML 1\.1 \(read as 90\.5\)"),
    ("train:\n  batch_size: 012\n", r"run\.yaml:4: 012 is an octal number in YAML 1\.1 \(read as 10\)"),
    (b"train:\n  output_dir: caf\xe9\n", r"run\.yaml:4: not UTF-8 text \(byte 0xe9 at offset"),
    ("? [optim, backbone_lr]\n: 1\n", r"run\.yaml:3: a key that is a list \(a YAML complex key\)"),
    ("train:\n  seed: " + nested(100) + "\n", r"run\.yaml:4: lists and mappings nested more than 64 deep"),
    ("train:\n  seed: " + nested(5000) + "\n", r"run\.yaml:4: lists and mappings nested more than 64 deep"),
])
def test_a_bad_number_or_shape_in_a_training_yaml_is_a_config_error(tmp_path, body, message):
    path = tmp_path / "run.yaml"
    path.write_bytes(DATA.encode() + body if isinstance(body, bytes) else (DATA + body).encode())
    with pytest.raises(ConfigError, match=message):
        load_config(path)


@pytest.mark.parametrize(("override", "message"), [
    ("optim.backbone_lr=1:30", r"run\.yaml: override 'optim\.backbone_lr=1:30':1: 1:30 is a base-60 number"),
    ("train.seed=012", r"run\.yaml: override 'train\.seed=012':1: 012 is an octal number"),
    ("data.bm25_b=1.01", r"run\.yaml: data\.bm25_b: expected a value in \[0, 1\], got 1\.01"),
])
def test_a_bad_number_in_an_override_is_a_config_error(tmp_path, override, message):
    path = tmp_path / "run.yaml"
    path.write_text(DATA)
    with pytest.raises(ConfigError, match=message):
        load_config(path, [override])


def test_plain_decimal_and_quoted_numbers_still_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  collections: [{path: BeIR/scifact}]\n  bm25_k1: 100\n  bm25_b: 0\n"
                    "optim:\n  backbone_lr: 3e-5\n  warmup_ratio: 1\n"
                    "train:\n  batch_size: 12\n  output_dir: '012'\n  seed: 0\n")
    cfg = load_config(path)
    assert (cfg.data.bm25_k1, cfg.data.bm25_b, cfg.optim.backbone_lr, cfg.optim.warmup_ratio) == (100, 0, 3e-5, 1)
    assert (cfg.train.batch_size, cfg.train.output_dir, cfg.train.seed) == (12, "012", 0)


def test_train_py_ends_a_complex_key_in_one_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text(DATA + "? [optim, backbone_lr]\n: 1\n")
    result = subprocess.run([sys.executable, "train.py", "--config", str(config)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines() == [f"config error: {config}:3: a key that is a list (a YAML complex "
                                                  "key); keys of a configuration file are names"]


@pytest.fixture(scope="module")
def docs():
    return np.random.default_rng(0).standard_normal((400, 16)).astype(np.float32)


@pytest.mark.parametrize("factor", [0, -2, "4", 2.5, True])
def test_a_refine_factor_that_is_not_an_integer_of_at_least_one_is_refused_when_made(docs, factor):
    with pytest.raises(ValueError, match=r"^refine_factor: expected an integer >= 1, got "):
        DenseIndex(docs, kind="ivf", nlist=4, refine_factor=factor)


@pytest.mark.parametrize("factor", [0, -2, "4", 2.5, None, True])
def test_a_saved_refine_factor_that_is_not_an_integer_of_at_least_one_is_refused_when_loaded(docs, tmp_path, factor):
    DenseIndex(docs, kind="ivf", nlist=4, refine_factor=2).save(tmp_path / "index.faiss")
    settings = json.loads((tmp_path / "index.faiss.json").read_text())
    (tmp_path / "index.faiss.json").write_text(json.dumps({**settings, "refine_factor": factor}))
    with pytest.raises(ValueError, match=r"index\.faiss\.json: refine_factor: expected an integer >= 1, got "):
        DenseIndex.load(tmp_path / "index.faiss", docs)


def test_an_integer_refine_factor_is_kept(docs, tmp_path):
    index = DenseIndex(docs, kind="ivf", nlist=4, nprobe=4, refine_factor=np.int64(3))
    assert index.refine_factor == 3 and type(index.refine_factor) is int
    index.save(tmp_path / "index.faiss")
    loaded = DenseIndex.load(tmp_path / "index.faiss", docs)
    assert loaded.refine_factor == 3 and loaded.search(docs[:5], 10)[1].shape == (5, 10)
