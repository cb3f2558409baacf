"""Every Python snippet of the README and of an exported model card runs, on a quickstart-like model, offline."""

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hyper_retrieval.hub.export import export_for_hub
from modeling_hyper import HyperPromptConfig, HyperRetrieverModel

REPO = Path(__file__).resolve().parents[1]
RUNNER = textwrap.dedent("""
    import sys
    blocks = open(sys.argv[1]).read().split("\\n#### next block\\n")
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"{sys.argv[2]} snippet {i + 1}", "exec"), {"__name__": "__snippet__"})
        except Exception as e:
            sys.exit(f"{sys.argv[2]} snippet {i + 1} failed: {type(e).__name__}: {e}\\n{block}")
    print(f"{len(blocks)} snippets ran")
""")


def python_snippets(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


@pytest.fixture(scope="module")
def workdir(minilm_path, tmp_path_factory) -> Path:
    """A folder laid out as after the quickstart: outputs/quickstart/final (a HypeR MiniLM with a frozen passage
    encoder) and its export outputs/quickstart/hub, also reachable as the card's path/to/this/folder,
    and the sample ropes folder as its path/to/beir/folder."""
    root = tmp_path_factory.mktemp("readme")
    model = HyperRetrieverModel.from_backbone("sentence-transformers/all-MiniLM-L6-v2",
                                              hyper_prompt=HyperPromptConfig(pool_size=5), share_encoders=False,
                                              freeze_passage_encoder=True, max_seq_length=128)
    model.calibrate_synthesizer(["who wrote moby dick", "what causes the seasons", "where do tides come from"])
    model.save_pretrained(root / "outputs" / "quickstart" / "final")
    export_for_hub(root / "outputs" / "quickstart" / "final", root / "outputs" / "quickstart" / "hub")
    (root / "data").symlink_to(REPO / "data")  # the README's data/sample paths
    (root / "path" / "to" / "this").mkdir(parents=True)
    (root / "path" / "to" / "this" / "folder").symlink_to(root / "outputs" / "quickstart" / "hub")
    (root / "path" / "to" / "beir").mkdir()
    (root / "path" / "to" / "beir" / "folder").symlink_to(REPO / "data" / "sample" / "ropes")  # the card's MTEB task
    return root


def run_snippets(snippets: list[str], name: str, cwd: Path) -> str:
    assert snippets, f"{name} has no Python snippet"
    script = cwd / f"{name}.snippets.py"
    script.write_text("\n#### next block\n".join(snippets))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", RUNNER, str(script), name], cwd=cwd, env=env,
                            capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def test_every_readme_snippet_runs(workdir):
    snippets = python_snippets((REPO / "README.md").read_text())
    assert f"{len(snippets)} snippets ran" in run_snippets(snippets, "README", workdir)


def test_every_model_card_snippet_runs(workdir):
    card = (workdir / "outputs" / "quickstart" / "hub" / "README.md").read_text()
    snippets = python_snippets(card)
    assert len(snippets) >= 4  # transformers, sentence-transformers, pipeline, the adapter
    assert f"{len(snippets)} snippets ran" in run_snippets(snippets, "card", workdir)
