"""Every eval.py flag and eval YAML value is checked before a model or corpus loads: one line naming the flag (or the
file and key) and what is allowed, exit status 2, nothing written. Settings a model cannot take end in one line too."""

import pytest
from test_eval_cli import load_eval_module


@pytest.fixture(scope="module")
def eval_cli():
    return load_eval_module()


def refused(eval_cli, capsys, argv):
    """The exit status and the last line of stderr of eval.py on ``argv``."""
    with pytest.raises(SystemExit) as stopped:
        eval_cli.main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    return stopped.value.code, lines[-1] if lines else str(stopped.value.code)


@pytest.mark.parametrize(("flags", "message"), [
    (["--k", "0"], "argument --k: expected an integer >= 1, got 0"),
    (["--prune-query-terms", "0"], "argument --prune-query-terms: expected an integer >= 1, got 0"),
    (["--max-length", "0"], "argument --max-length: expected an integer >= 1, got 0"),
    (["--nprobe", "0"], "argument --nprobe: expected an integer >= 1, got 0"),
    (["--nlist", "-3"], "argument --nlist: expected an integer >= 1, got -3"),
    (["--nlist", "0"], "argument --nlist: expected an integer >= 1, got 0"),
    (["--pq-m", "0"], "argument --pq-m: expected an integer >= 1, got 0"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got 0"),
    (["--shard-docs", "0"], "argument --shard-docs: expected an integer >= 1, got 0"),
    (["--refine-factor", "0"], "argument --refine-factor: expected an integer >= 1, got 0"),
    (["--bm25-k1", "-1"], "argument --bm25-k1: expected a number in [0, 100], got -1"),
    (["--bm25-b", "1.5"], "argument --bm25-b: expected a number in [0, 1], got 1.5"),
    (["--fusion-weight", "nan"], "argument --fusion-weight: expected a number in [0, 1], got nan"),
    (["--k", "ten"], "argument --k: expected an integer >= 1, got 'ten'"),
    (["--windows", "max", "--max-length", "128", "--window-stride", "300"],
     "--window-stride 300: at most the window, --max-length 128"),
    (["--window-stride", "32"], "--window-stride 32: a stride goes with --windows max"),
])
def test_a_flag_out_of_range_is_one_line_naming_it(eval_cli, capsys, tmp_path, flags, message):
    code, line = refused(eval_cli, capsys, ["--model", "bm25", "--data", "nowhere", "--out", str(tmp_path / "o"),
                                            *flags])
    assert code == 2 and line.endswith(message)
    assert not (tmp_path / "o").exists()


def test_out_naming_a_file_is_refused_before_the_run(eval_cli, capsys, tmp_path):
    (tmp_path / "results").write_text("mine")
    code, line = refused(eval_cli, capsys, ["--model", "bm25", "--data", "nowhere", "--out", str(tmp_path / "results")])
    assert code == 2 and "a file is there; results go into a folder" in line
    assert (tmp_path / "results").read_text() == "mine"


@pytest.mark.parametrize(("yaml_text", "message"), [
    ('model: bm25\ndata: [x]\noverwrite: "false"\n', "eval.yaml: overwrite: expected true or false, got 'false' (str)"),
    ("model: bm25\ndata: some/path\n", "eval.yaml: data: expected a list of values, got 'some/path' (str)"),
    ("model: bm25\ndata: [x]\nk: 10.5\n", "eval.yaml: argument --k: expected an integer >= 1, got '10.5'"),
    ("model: bm25\ndata: [x]\nindex: bogus\n", "eval.yaml: argument --index: invalid choice: 'bogus'"),
    ("model: bm25\ndata: [x]\nk: 10\nk: 20\n", "eval.yaml:4: duplicate key 'k' (first at line 3)"),
    ("model: bm25\ndata: [x]\nsplit: {a: 1}\n", "eval.yaml: split: expected a single value, got {'a': 1} (dict)"),
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
     "eval.yaml:2: aliases (*a) are not allowed in a configuration file; write the value out"),
    ("model: bm25\ndata: [x]\nsplit: [" + ", ".join(["long-value"] * 500) + "]\n", "... (7000 characters) (list)"),
])
def test_a_bad_yaml_value_is_one_line_naming_file_and_key(eval_cli, capsys, tmp_path, yaml_text, message):
    config = tmp_path / "eval.yaml"
    config.write_text(yaml_text)
    code, line = refused(eval_cli, capsys, ["--config", str(config), "--out", str(tmp_path / "o")])
    assert code == 2 and message in line, line
    assert len(line) < 300 and not (tmp_path / "o").exists()


def test_settings_the_model_cannot_take_are_one_line(eval_cli, capsys, samples_dir, splade_path, minilm_path,
                                                     tmp_path):
    from modeling_hyper import HyperRetrieverModel

    HyperRetrieverModel.from_backbone(splade_path, representation="sparse").save_pretrained(tmp_path / "sparse")
    with pytest.raises(SystemExit, match=r"index kind 'ivfpq' \(--index\) is for dense vectors"):
        eval_cli.main(["--model", str(tmp_path / "sparse"), "--data", str(samples_dir), "--index", "ivfpq",
                       "--out", str(tmp_path / "s"), "--cache-dir", "", "--no-progress"])
    with pytest.raises(SystemExit, match="is not a retriever: it has no encode_queries / encode_corpus"):
        eval_cli.main(["--model", minilm_path, "--data", str(samples_dir), "--out", str(tmp_path / "m"),
                       "--cache-dir", "", "--no-progress"])
    assert not (tmp_path / "s").exists() and not (tmp_path / "m").exists()


@pytest.fixture
def samples_dir(bbir, tmp_path):
    from sample_collection import sample_of

    return sample_of(bbir / "ropes", tmp_path / "ropes", 20)


@pytest.mark.parametrize(("script", "flags", "message"), [
    ("encode.py", ["--model", "m", "--corpus", "c", "--batch-size", "0"],
     "argument --batch-size: expected an integer >= 1, got 0"),
    ("encode.py", ["--model", "m", "--corpus", "c", "--index", "ivfpq", "--index-out", "i", "--pq-m", "0"],
     "argument --pq-m: expected an integer >= 1, got 0"),
    ("train.py", ["--config", "configs/quickstart.yaml", "--stop-after-steps", "0"],
     "argument --stop-after-steps: expected an integer >= 1, got 0"),
])
def test_encode_and_train_flags_are_checked_the_same_way(script, flags, message):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, script, *flags], cwd=repo, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].endswith(message)
