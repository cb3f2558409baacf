"""Publishing: the exported folder loads three ways in a fresh offline process, the upload sends exactly that folder,
and the model card's metadata round-trips the eval.py numbers."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hub_run import POOL_SIZE, REPO_ID
from huggingface_hub import HfApi, ModelCard
from test_eval_cli import load_eval_module
from tiny import tiny_model

from hyper_retrieval.core.run_folders import RunFolderError, check_export_target
from hyper_retrieval.evaluation.results import METRICS
from hyper_retrieval.hub.card import DEFAULT_WIDGET, build_model_card, metric_type
from hyper_retrieval.hub.export import export_for_hub, push_to_hub

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["what causes the seasons on earth", "who wrote the novel moby dick", "boiling point of water"]
PASSAGES = ["The tilt of Earth's axis causes the seasons.", "Moby-Dick is a novel by Herman Melville.", "Tides."]
EXPORTED = sorted([
    "README.md", "assets/attention_heatmap.png", "config.json", "model.safetensors", "configuration_hyper.py",
    "hyper_prompt.py", "modeling_hyper.py", "encoding_hyper.py", "tokenizer.json", "tokenizer_config.json",
    "adapter/hyper_prompt_config.json", "adapter/hyper_prompt.safetensors", "adapter/README.md", "modules.json",
    "config_sentence_transformers.json", "sentence_hyper.py", "handler.py", "widget.py", "widget.html",
    "extra_files.json",
])

THREE_WAYS = textwrap.dedent(
    """
    import sys, numpy as np
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, pipeline
    folder, out, long = sys.argv[1], sys.argv[2], sys.argv[5]
    queries, passages = sys.argv[3].split("|"), sys.argv[4].split("|")
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    st = SentenceTransformer(folder, trust_remote_code=True, device="cpu")
    extractor = pipeline("feature-extraction", model=folder, trust_remote_code=True)
    modules = [type(model).__module__, type(st[0]).__module__, type(extractor.model).__module__]
    assert all(m.startswith("transformers_modules.") for m in modules), modules
    np.savez(out, auto_q=model.encode_queries(queries), auto_p=model.encode_corpus(passages),
             st_q=st.encode_query(queries), st_p=st.encode_document(passages),
             st_plain=st.encode(queries, task="query"),
             pipe_q=np.array([extractor(q)[0] for q in queries]),
             pipe_long=np.array(extractor(long, truncation=True)[0]))
    """
)


LONG = " ".join(["why do the seasons change on earth"] * 40)  # far over the model's 64 tokens


def test_exported_folder_loads_three_ways_in_a_fresh_offline_process(hub_run, tmp_path):
    folder = tmp_path / "elsewhere" / "downloaded"
    shutil.copytree(hub_run.export_dir, folder)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    out = tmp_path / "three_ways.npz"
    result = subprocess.run([sys.executable, "-c", THREE_WAYS, str(folder), str(out), "|".join(QUERIES),
                             "|".join(PASSAGES), LONG], cwd=tmp_path, env=env, capture_output=True, text=True,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-3000:]
    found = dict(np.load(out))

    # The same numbers every way, and the same as the model before export.
    for name in ("auto_q", "st_q", "st_plain", "pipe_q"):
        np.testing.assert_allclose(found[name], hub_run.model.encode_queries(QUERIES), rtol=0, atol=1e-6, err_msg=name)
    for name in ("auto_p", "st_p"):
        np.testing.assert_allclose(found[name], hub_run.model.encode_corpus(PASSAGES), rtol=0, atol=1e-6, err_msg=name)
    # pipeline(..., truncation=True) cuts a long text where encode_queries does (the model's max_seq_length)
    np.testing.assert_allclose(found["pipe_long"], hub_run.model.encode_queries([LONG])[0], rtol=0, atol=1e-6)
    # encode_query uses the hyper-prompt and encode_document does not: the same text gets different vectors.
    st_p_of_queries = hub_run.model.encode_corpus(QUERIES)
    assert np.abs(found["st_q"] - st_p_of_queries).max(axis=1).min() > 1e-3


def test_export_writes_the_hub_folder_and_its_adapter(hub_run):
    files = sorted(p.relative_to(hub_run.export_dir).as_posix() for p in hub_run.export_dir.rglob("*") if p.is_file())
    assert files == EXPORTED
    config = json.loads((hub_run.export_dir / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_hyper.HyperRetrieverModel"
    modules = json.loads((hub_run.export_dir / "modules.json").read_text())
    assert modules[0]["type"] == "sentence_hyper.HyperSentenceEncoder"
    assert not (hub_run.export_dir / "adapter_config.json").exists()  # would make AutoModel look for a PEFT adapter
    # The adapter alone, attached to a fresh model of the same backbone, reproduces the prompt attention.
    fresh = model_with_reset_pool(hub_run)
    fresh.attach_adapter(hub_run.export_dir / "adapter")
    np.testing.assert_allclose(fresh.prompt_attention(QUERIES), hub_run.model.prompt_attention(QUERIES), atol=1e-6)


def model_with_reset_pool(hub_run):
    """The exported model with its prompt pool re-initialised, so only attach_adapter can restore it."""
    from modeling_hyper import HyperRetrieverModel

    model = HyperRetrieverModel.from_pretrained(hub_run.export_dir).eval()
    model.hyper_prompt.reset_pool()
    assert np.abs(model.prompt_attention(QUERIES) - hub_run.model.prompt_attention(QUERIES)).max() > 1e-3
    return model


def test_model_card_round_trips_the_eval_results(hub_run):
    card = ModelCard.load(hub_run.export_dir / "README.md")
    results = json.loads((hub_run.eval_dir / "results.json").read_text())
    data = card.data
    assert (data.pipeline_tag, data.library_name, data.license) == ("sentence-similarity", "sentence-transformers",
                                                                    "apache-2.0")
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"  # from train_config.yaml beside the model
    assert data.datasets == ["BeIR/scifact", "google/bigbench"]  # Hub ids, and the source of the local qasc sample
    assert data.widget == DEFAULT_WIDGET and "custom_code" in data.tags

    found = {(r.dataset_name, r.metric_type): r.metric_value for r in data.eval_results}
    expected = {(name, metric_type(metric)): entry["metrics"][metric]
                for name, entry in results["collections"].items() for metric in METRICS}
    assert found == expected and len(found) == 2 * len(METRICS)
    assert {r.dataset_split for r in data.eval_results} == {"test"} and data.model_name == REPO_ID.split("/")[1]

    text = card.text
    ropes = results["collections"]["ropes"]["metrics"]
    assert f"| ropes | {ropes['ndcg@10']:.4f} | {ropes['r_precision']:.4f} |" in text
    assert "zero-shot (never trained on): multirc, ropes" in text  # by the training config: ropes was evaluated as
    assert "| ropes | no | " in text  # in-domain (--data) but the model never saw it
    assert "**This is a short run (40 steps)" in text
    assert "| qasc | bigbench==1.0.0" in text and "| CC BY 4.0 |" in text  # the training data's licence
    assert "![mean prompt attention per collection](assets/attention_heatmap.png)" in text
    assert (hub_run.export_dir / "assets/attention_heatmap.png").read_bytes() == \
        (hub_run.eval_dir / "attention_heatmap.png").read_bytes()
    assert f"a pool of {POOL_SIZE} prompts of 1 virtual token, mixed per query (cosine synthesizer" in text
    routing = results["routing"]["collections"]["multirc"]  # the routing diagnostics, as eval.py measured them
    assert f"| multirc | {routing['entropy']:.3f} | {routing['top_share']:.3f} | — |" in text
    assert f"| **all** | {results['routing']['all']['entropy']:.3f} |" in text
    assert f'AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert "  max_steps: 40" in text  # the training settings
    assert "@inproceedings{cai2023hyper" in text and "Multitask Hyper-Prompted Training" in text


def test_card_of_a_model_without_pool_or_results():
    card = build_model_card(tiny_model(pool_size=None).config)
    assert card.data.eval_results is None and card.data.base_model is None
    assert "no prompt (the multi-task baseline)" in card.text
    assert "No evaluation results were exported" in card.text and "No training configuration" in card.text


def upload_mocks():
    return (mock.patch.object(HfApi, "create_repo"), mock.patch.object(HfApi, "create_commit"),
            mock.patch.object(ModelCard, "validate"))


def sent_files(create_commit) -> dict[str, str]:
    (call,) = create_commit.call_args_list
    return {op.path_in_repo: op.path_or_fileobj for op in call.kwargs["operations"]}


def test_push_to_hub_sends_exactly_the_exported_files(hub_run, tmp_path):
    folder = tmp_path / "hub"
    shutil.copytree(hub_run.export_dir, folder)
    (folder / "__pycache__").mkdir()
    (folder / "__pycache__" / "handler.cpython-311.pyc").write_bytes(b"cache")  # e.g. after trying handler.py
    create_repo, create_commit, validate = upload_mocks()
    with create_repo as repo, create_commit as commit, validate as check:
        push_to_hub(folder, "someone/pushed", token="hf_test", private=True)
    repo.assert_called_once_with("someone/pushed", repo_type="model", private=True, exist_ok=True)
    check.assert_called_once_with(repo_type="model")
    sent = sent_files(commit)
    assert sorted(sent) == EXPORTED
    assert all(Path(path) == folder / name for name, path in sent.items())
    assert commit.call_args.kwargs["repo_id"] == "someone/pushed"


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="not an exported folder"):
        push_to_hub(tmp_path, "someone/x")


def test_export_command_line_writes_then_pushes(hub_run, tmp_path):
    spec = importlib.util.spec_from_file_location("export_cli", REPO / "export.py")
    export_cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(export_cli)
    out = tmp_path / "cli"
    create_repo, create_commit, validate = upload_mocks()
    with create_repo as repo, create_commit as commit, validate:
        export_cli.main(["--model", str(hub_run.model_dir), "--results", str(hub_run.eval_dir), "--out", str(out),
                         "--push-to-hub", "someone/cli", "--base-model", "org/backbone", "--dataset", "org/data"])
    repo.assert_called_once_with("someone/cli", repo_type="model", private=False, exist_ok=True)
    assert sorted(sent_files(commit)) == EXPORTED
    card = ModelCard.load(out / "README.md")
    assert (card.data.base_model, card.data.datasets, card.data.model_name) == ("org/backbone", ["org/data"], "cli")


def test_export_refusals(hub_run, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not empty"):
        export_for_hub(hub_run.model_dir, tmp_path / "busy")
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"
    tiny_model().save_pretrained(tmp_path / "no_tokenizer")
    with pytest.raises(ValueError, match="no tokenizer beside the weights"):
        export_for_hub(tmp_path / "no_tokenizer", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_never_writes_over_a_training_run(hub_run, tmp_path):
    """The run that holds the model (checkpoints/, final/, log.jsonl) survives every --out that would replace it or
    part of it, --overwrite or not; a new folder beside its artefacts is fine."""
    run = tmp_path / "run"
    shutil.copytree(hub_run.model_dir, run / "final")
    (run / "checkpoints" / "step_2").mkdir(parents=True)
    (run / "checkpoints" / "step_2" / "model.safetensors").write_bytes(b"weights")
    (run / "log.jsonl").write_text('{"step": 1}\n')
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    for out, message in ((run, "holds the model being exported"), (tmp_path, "holds the model being exported"),
                         (run / "final", "holds the model being exported"),
                         (run / "checkpoints" / "hub", "part of the training run"),
                         (run / "final" / "sub", "part of the training run")):
        with pytest.raises(RunFolderError, match=message):
            export_for_hub(run / "final", out, overwrite=True)
        result = subprocess.run([sys.executable, str(REPO / "export.py"), "--model", str(run / "final"), "--out",
                                 str(out), "--overwrite"], cwd=REPO, capture_output=True, text=True,
                                env={**os.environ, "HF_HUB_OFFLINE": "1"}) if out == run else None
        if result is not None:  # the command line: one line, no traceback, exit status 1
            assert result.returncode == 1 and "export.py: --out" in result.stderr and "Traceback" not in result.stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    other = tmp_path / "elsewhere"  # a folder holding another run, below the target
    shutil.copytree(run, other / "old-run")
    with pytest.raises(RunFolderError, match="holds the training run"):
        export_for_hub(hub_run.model_dir, other, overwrite=True)
    assert (other / "old-run" / "checkpoints" / "step_2" / "model.safetensors").read_bytes() == b"weights"
    check_export_target(run / "hub", run / "final")  # beside the artefacts: allowed


def test_export_refuses_results_of_another_model(hub_run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(hub_run.model_dir, other)
    weights = other / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")  # another model: different weights
    with pytest.raises(ValueError, match=rf"holds results of .*{hub_run.model_dir.name}.* not of {other}"):
        export_for_hub(other, tmp_path / "out", hub_run.eval_dir)
    assert not (tmp_path / "out").exists()


def test_the_card_says_where_the_baseline_wins(hub_run, tmp_path):
    """Exported with BM25's results on the same collections, the card names every collection where BM25 is better."""
    root = hub_run.eval_dir.parent
    load_eval_module().main(["--model", "bm25", "--data", str(root / "ropes"), "--zero-shot", str(root / "multirc"),
                             "--out", str(tmp_path / "bm25"), "--no-progress"])
    out = export_for_hub(hub_run.model_dir, tmp_path / "hub", hub_run.eval_dir, baseline_dir=tmp_path / "bm25")
    text = (out / "README.md").read_text()
    ours, theirs = (json.loads((d / "results.json").read_text())["collections"]
                    for d in (hub_run.eval_dir, tmp_path / "bm25"))
    losses = [c for c in ours if theirs[c]["metrics"]["ndcg@10"] > ours[c]["metrics"]["ndcg@10"]]
    assert losses, "the untrained-like test model should lose somewhere to BM25"
    assert f"**bm25 beats this model on {len(losses)} of 2 collections: " in text
    for c in losses:
        assert f"{c} ({theirs[c]['metrics']['ndcg@10']:.4f} vs {ours[c]['metrics']['ndcg@10']:.4f})" in text


def test_share_alike_training_data_makes_the_licence_other(tmp_path):
    config = tiny_model().config
    licences = {"vitaminc": {"source": "bigbench==1.0.0 x", "licence": "CC BY-SA 3.0 (Wikipedia-derived)"}}
    assert build_model_card(config, licences=licences).data.license == "other"
    assert build_model_card(config, licences={"qasc": {"licence": "CC BY 4.0"}}).data.license == "apache-2.0"
    assert build_model_card(config, licences=licences, license="mit").data.license == "mit"


def test_export_writes_only_what_it_knows(hub_run, tmp_path):
    """A model folder with a pickled adapter, a stray script and odd assets: none of it reaches the Hub folder, and a
    folder that somehow holds such files is refused before upload."""
    model = tmp_path / "final"
    shutil.copytree(hub_run.model_dir, model)
    (model / "adapter").mkdir()
    (model / "adapter" / "pytorch_model.bin").write_bytes(b"a torch pickle")
    (model / "helper.py").write_text("import os  # would run on the user's machine\n")
    (model / "assets").mkdir()
    (model / "assets" / "state.pkl").write_bytes(b"pickle")
    (model / "README.md").write_text("an old card")
    out = export_for_hub(model, tmp_path / "hub")
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert not {"adapter/pytorch_model.bin", "helper.py", "assets/state.pkl"} & files
    assert "an old card" not in (out / "README.md").read_text()
    assert {"model.safetensors", "adapter/hyper_prompt.safetensors", "handler.py", "modeling_hyper.py"} <= files
    (out / "adapter" / "pytorch_model.bin").write_bytes(b"a torch pickle")
    with pytest.raises(ValueError, match=r"files an export never writes: \['adapter/pytorch_model.bin'\]"):
        push_to_hub(out, "someone/x", token="none")


def test_export_overwrite_on_a_full_disk_keeps_the_old_export(hub_run, tmp_path):
    """export.py --overwrite over a complete export, on a disk that fills while the new one is written (a real limit:
    RLIMIT_FSIZE, files cannot grow past 2 MB, so the weights cannot be written): every file of the old export is
    still there, byte for byte, nothing is left beside it, and the command exits non-zero naming what failed."""
    from test_eval_cli import _file_size_limited

    out = tmp_path / "export"
    shutil.copytree(hub_run.export_dir, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert Path("model.safetensors") in before and len(before) >= 16
    result = subprocess.run([sys.executable, str(REPO / "export.py"), "--model", str(hub_run.model_dir), "--results",
                             str(hub_run.eval_dir), "--out", str(out), "--overwrite"], cwd=REPO, capture_output=True,
                            text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                            preexec_fn=_file_size_limited(2 * 2**20))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"export.py: {out}: writing the export failed" in result.stderr
    assert "the export there before is unchanged" in result.stderr
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]  # no temporary folder left
    # and with room, --overwrite replaces it whole
    export_for_hub(hub_run.model_dir, out, hub_run.eval_dir, overwrite=True)
    assert sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file()) == sorted(before)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".export.lock", "export"]
