#!/usr/bin/env bash
# The test command: installs into .venv, lints, runs the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
# Headless Chromium for the widget page's screenshot test (skipped, with a message, where it cannot be installed).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "chromium could not be installed: tests/test_widget.py's screenshot test will be skipped"
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check .
lint-imports  # the layers of pyproject.toml [tool.importlinter]
# Two workers (pytest-xdist), a file to a worker (tests/conftest.py groups them), one torch thread each: the 2 cores
# share the work instead of idling through process start-ups and I/O.
OMP_NUM_THREADS=1 python -m pytest -q -n 2 --dist loadgroup "$@"
