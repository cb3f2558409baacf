"""Saving and loading: the full model through AutoModel (remote code, offline), and the adapter alone."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CONFIG_MAPPING

from modeling_hyper import HyperConfig, HyperPromptConfig, HyperRetrieverModel

QUERIES = ["who wrote the novel moby dick", "what causes the seasons on earth"]
PASSAGES = [{"title": "Moby-Dick", "text": "A novel by Herman Melville."}, "Axial tilt causes the seasons."]

LOAD_AND_ENCODE = textwrap.dedent(
    """
    import sys, numpy as np, scipy.sparse
    from transformers import AutoModel, AutoTokenizer
    folder, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True)
    assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
    assert AutoTokenizer.from_pretrained(folder, trust_remote_code=True) is not None
    q = model.encode_queries({queries!r})
    p = model.encode_corpus({passages!r})
    dense = lambda m: m.toarray() if scipy.sparse.issparse(m) else m
    np.savez(out, q=dense(q), p=dense(p))
    """
)


def load_in_fresh_process(folder: Path, tmp_path: Path) -> dict:
    """AutoModel.from_pretrained in a new offline process, with an empty HF_HOME and outside the repo."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home"), "PYTHONPATH": ""}
    script = LOAD_AND_ENCODE.format(queries=QUERIES, passages=PASSAGES)
    out = tmp_path / "encoded.npz"
    result = subprocess.run(
        [sys.executable, "-c", script, str(folder), str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Do you wish to run the custom code" not in result.stderr + result.stdout  # no interactive prompt
    assert "to instantiate a model of type" not in result.stderr
    return dict(np.load(out))


def dense(matrix):
    return matrix.toarray() if hasattr(matrix, "toarray") else matrix


@pytest.mark.parametrize("representation", ["dense", "sparse"])
def test_save_then_load_in_fresh_offline_process(representation, minilm_path, splade_path, tmp_path):
    backbone = splade_path if representation == "sparse" else minilm_path
    torch.manual_seed(0)
    model = HyperRetrieverModel.from_backbone(
        backbone, hyper_prompt=HyperPromptConfig(pool_size=4), representation=representation, share_encoders=False
    )
    with torch.no_grad():  # make the passage encoder differ from the query encoder, so a mix-up would show
        model.passage_encoder.get_input_embeddings().weight.mul_(1.01)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)

    files = sorted(p.name for p in folder.iterdir())
    code = {"configuration_hyper.py", "modeling_hyper.py", "hyper_prompt.py", "encoding_hyper.py"}
    assert {"config.json", "model.safetensors", *code} <= set(files)
    assert "tokenizer.json" in files or "vocab.txt" in files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl", ".pth"))], files
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_hyper.HyperRetrieverModel"
    assert config["hyper_prompt"]["pool_size"] == 4

    loaded = load_in_fresh_process(folder, tmp_path)
    np.testing.assert_allclose(loaded["q"], dense(model.encode_queries(QUERIES)), atol=1e-6)
    np.testing.assert_allclose(loaded["p"], dense(model.encode_corpus(PASSAGES)), atol=1e-6)


def test_model_type_is_ours_alone():
    assert HyperConfig.model_type not in CONFIG_MAPPING


def test_adapter_save_then_attach_equals_full_model(minilm_path, tmp_path):
    torch.manual_seed(0)
    full = HyperRetrieverModel.from_backbone(
        minilm_path, hyper_prompt=HyperPromptConfig(pool_size=3, num_virtual_tokens=2), freeze_query_backbone=True
    )
    with torch.no_grad():
        full.hyper_prompt.pool.add_(torch.randn_like(full.hyper_prompt.pool))  # "trained" prompts
    full.save_adapter(tmp_path / "adapter")
    assert sorted(os.listdir(tmp_path / "adapter")) == ["hyper_prompt.safetensors", "hyper_prompt_config.json"]

    attached = HyperRetrieverModel.from_backbone(minilm_path).attach_adapter(tmp_path / "adapter")
    np.testing.assert_array_equal(attached.encode_queries(QUERIES), full.encode_queries(QUERIES))
    np.testing.assert_array_equal(attached.prompt_attention(QUERIES), full.prompt_attention(QUERIES))
    assert attached.config.hyper_prompt == full.config.hyper_prompt


def test_adapter_errors_name_the_file(minilm_path, tmp_path):
    plain = HyperRetrieverModel.from_backbone(minilm_path)
    with pytest.raises(ValueError, match="no hyper-prompt to save"):
        plain.save_adapter(tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="hyper_prompt_config.json"):
        plain.attach_adapter(tmp_path / "missing")
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "hyper_prompt_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="hyper_prompt_config.json: not valid JSON"):
        plain.attach_adapter(folder)
    HyperPromptConfig(token_dim=128).save_pretrained(folder)
    with pytest.raises(ValueError, match="token_dim=128 does not match"):
        plain.attach_adapter(folder)


def test_corrupt_weights_file_is_reported(minilm_path, tmp_path):
    model = HyperRetrieverModel.from_backbone(minilm_path)
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(Exception, match=r"(?i)safetensors|header|deserializ|incomplete|invalid"):
        HyperRetrieverModel.from_pretrained(tmp_path)
