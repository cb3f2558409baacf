"""The hyper-prompt adapter as its own publication: adapter/README.md in a full export, the adapter-only export
(export_for_hub(adapter_only=True), export.py --adapter-only) and push_to_hub of either form (offline: the Hub calls
are mocked)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from hub_run import REPO_ID
from huggingface_hub import ModelCard
from test_hub import sent_files, upload_mocks
from tiny import tiny_model

from hyper_retrieval.hub.card import build_adapter_card
from hyper_retrieval.hub.export import NoAdapterError, export_for_hub, push_to_hub
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

REPO = Path(__file__).resolve().parents[1]
MINILM = "sentence-transformers/all-MiniLM-L6-v2"  # in the offline Hugging Face cache (scripts/setup_env.sh)
ADAPTER_FILES = ["README.md", "hyper_prompt.safetensors", "hyper_prompt_config.json"]
QUERIES = ["who wrote moby dick", "what causes the seasons on earth", "boiling point of water at altitude"]


def export_cli():
    spec = importlib.util.spec_from_file_location("export_cli", REPO / "export.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def size_line(folder: Path) -> str:
    size = sum((folder / f).stat().st_size for f in ("hyper_prompt_config.json", "hyper_prompt.safetensors"))
    return f"- size: {size:,} bytes (hyper_prompt_config.json + hyper_prompt.safetensors)"


@pytest.fixture(scope="module")
def frozen_run(minilm_path, tmp_path_factory):
    """A real-MiniLM HypeR model trained (in effect) with its query backbone frozen, saved as train.py does."""
    root = tmp_path_factory.mktemp("frozen")
    torch.manual_seed(0)
    model = HyperRetrieverModel.from_backbone(minilm_path, hyper_prompt=HyperPromptConfig(pool_size=3),
                                              freeze_query_backbone=True, share_encoders=False,
                                              freeze_passage_encoder=True).eval()
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # the prompt modules away from their initialisation, as training would move them
        for param in model.hyper_prompt.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    model.calibrate_synthesizer(QUERIES)
    model.save_pretrained(root / "final")
    return model, root / "final"


def test_full_export_carries_the_adapter_card(hub_run):
    """hub_run's model trained its backbone: the adapter's card names the backbone, its true size, and says it needs
    its own backbone, pointing to the full model."""
    adapter = hub_run.export_dir / "adapter"
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model == MINILM and {"hyper-prompt", "adapter"} <= set(card.data.tags)
    assert card.data.library_name == "hyper-retrieval"
    # trained from the pip-shipped local copy: the exported adapter names the Hub id the card gives
    assert json.loads((adapter / "hyper_prompt_config.json").read_text())["base_model_name_or_path"] == MINILM
    text = card.text
    assert f"- backbone it needs: `{MINILM}` (`base_model_name_or_path`" in text
    assert size_line(adapter) in text
    assert f"{sum(p.numel() for p in hub_run.model.hyper_prompt.parameters()):,} parameters" in text
    assert "- trained with the query backbone frozen: no (the backbone trained too)" in text
    assert "**This adapter only works on its own trained model.**" in text and "needs its own backbone" in text
    assert f'model = AutoModel.from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert "load_adapter" in text and "refuses it" in text
    # the same results as the model card
    main = ModelCard.load(hub_run.export_dir / "README.md")
    assert card.data.eval_results == main.data.eval_results and card.data.eval_results
    table = main.text.split("## Results", 1)[1].split("How the queries route")[0].strip()
    assert table in text
    # the model card tells of adapters side by side on one backbone and one passage index
    assert "loads\nbeside others onto one backbone" in main.text and "one passage\nindex serves every adapter" in \
        main.text


def test_adapter_only_export_writes_the_three_files(hub_run, tmp_path):
    out = export_for_hub(hub_run.model_dir, tmp_path / "adapter", hub_run.eval_dir, adapter_only=True,
                         repo_id="someone/hyper-adapter")
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ADAPTER_FILES
    for name in ("hyper_prompt.safetensors", "hyper_prompt_config.json"):
        assert (out / name).read_bytes() == (hub_run.export_dir / "adapter" / name).read_bytes()
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == MINILM and card.data.model_name == "hyper-adapter"
    assert size_line(out) in card.text
    assert "needs its own backbone" in card.text
    assert 'AutoModel.from_pretrained("<the HypeR model this adapter was exported from>"' in card.text
    with pytest.raises(FileExistsError, match="is not empty"):  # the refusals of a full export
        export_for_hub(hub_run.model_dir, out, adapter_only=True)


def test_frozen_adapter_export_loads_onto_the_plain_backbone(frozen_run, tmp_path):
    model, model_dir = frozen_run
    out = export_for_hub(model_dir, tmp_path / "adapter", adapter_only=True, repo_id="someone/qa-adapter",
                         base_model=MINILM)
    assert sorted(p.name for p in out.iterdir()) == ADAPTER_FILES
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == MINILM
    text = card.text
    assert "- trained with the query backbone frozen: yes" in text and size_line(out) in text
    assert "only works on its own trained model" not in text
    snippet = (f'model = HyperRetrieverModel.from_backbone("{MINILM}")', 'model.load_adapter("someone/qa-adapter", '
               'adapter_name="qa-adapter")', 'q = model.encode_queries(["what causes the seasons on earth"], '
               'adapter="qa-adapter")')
    assert all(line in text for line in snippet)
    # what the snippet does, with the folder for the repository
    base = HyperRetrieverModel.from_backbone(MINILM)
    assert base.load_adapter(out, adapter_name="qa-adapter") == "qa-adapter"
    np.testing.assert_array_equal(base.encode_queries(QUERIES, adapter="qa-adapter"), model.encode_queries(QUERIES))
    np.testing.assert_allclose(base.encode_corpus(QUERIES), model.encode_corpus(QUERIES), atol=1e-6)


def test_frozen_adapter_of_a_local_backbone_keeps_its_path(frozen_run, minilm_path, tmp_path):
    """Without a Hub id for the backbone the adapter keeps the recorded folder, and the card no base_model."""
    model, model_dir = frozen_run
    out = export_for_hub(model_dir, tmp_path / "adapter", adapter_only=True)
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model is None and f"- backbone it needs: `{minilm_path}`" in card.text
    assert 'model.load_adapter("path/to/this/folder", adapter_name="hyper-prompt-adapter")' in card.text
    base = HyperRetrieverModel.from_backbone(minilm_path)
    base.load_adapter(out, adapter_name="local")
    np.testing.assert_array_equal(base.encode_queries(QUERIES, adapter="local"), model.encode_queries(QUERIES))


def test_adapter_card_without_the_frozen_record():
    prompt = {**tiny_model().config.hyper_prompt, "backbone_frozen": None, "base_model_name_or_path": "org/bert"}
    card = build_adapter_card(prompt, size_bytes=1234, trainable_parameters=56)
    assert card.data.base_model == "org/bert" and card.data.eval_results is None
    assert "- trained with the query backbone frozen: not recorded" in card.text
    assert "- size: 1,234 bytes" in card.text and "56 parameters" in card.text
    assert "only works on its own trained model" in card.text and "No evaluation results" in card.text


def test_a_model_without_hyper_prompt_refuses_adapter_only(tmp_path):
    tiny_model(pool_size=None).save_pretrained(tmp_path / "plain")
    with pytest.raises(NoAdapterError, match="the model has no hyper-prompt .* no adapter to export"):
        export_for_hub(tmp_path / "plain", tmp_path / "out", adapter_only=True)
    with pytest.raises(SystemExit) as exit_info:  # the command line: one line, no traceback
        export_cli().main(["--model", str(tmp_path / "plain"), "--out", str(tmp_path / "out"), "--adapter-only"])
    assert str(exit_info.value.code).startswith("export.py: ") and "has no hyper-prompt" in str(exit_info.value.code)
    assert not (tmp_path / "out").exists()


def test_adapter_only_command_line_pushes_just_the_adapter(hub_run, tmp_path):
    out = tmp_path / "cli"
    create_repo, create_commit, validate = upload_mocks()
    with create_repo as repo, create_commit as commit, validate as check:
        export_cli().main(["--model", str(hub_run.model_dir), "--results", str(hub_run.eval_dir), "--out", str(out),
                           "--adapter-only", "--push-to-hub", "someone/adapter"])
    repo.assert_called_once_with("someone/adapter", repo_type="model", private=False, exist_ok=True)
    check.assert_called_once_with(repo_type="model")
    sent = sent_files(commit)
    assert sorted(sent) == ADAPTER_FILES and all(Path(path) == out / name for name, path in sent.items())
    assert commit.call_args.kwargs["commit_message"] == "Upload HypeR hyper-prompt adapter"
    card = ModelCard.load(out / "README.md")
    assert card.data.model_name == "adapter" and card.data.eval_results  # --push-to-hub names it, with the results
    assert "needs its own backbone" in card.text


def test_push_refuses_a_folder_that_is_neither_form(hub_run, tmp_path):
    folder = tmp_path / "adapter"
    export_for_hub(hub_run.model_dir, folder, adapter_only=True)
    (folder / "hyper_prompt.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"neither a model \(README.md, config.json\) nor an adapter "
                       r"\(README.md, hyper_prompt_config.json, hyper_prompt.safetensors\)"):
        push_to_hub(folder, "someone/x", token="none")
    export_for_hub(hub_run.model_dir, folder, adapter_only=True, overwrite=True)
    (folder / "state.pkl").write_bytes(b"pickle")
    with pytest.raises(ValueError, match=r"files an export never writes: \['state.pkl'\]"):
        push_to_hub(folder, "someone/x", token="none")
