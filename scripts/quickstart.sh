#!/usr/bin/env bash
# The main job on the bundled sample, offline on CPU: train HypeR (MiniLM backbone) -> evaluate -> export.
# Extra arguments go to train.py as overrides, e.g.  bash scripts/quickstart.sh optim.max_steps=10
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
OUT=outputs/quickstart
rm -rf "$OUT"
python train.py --config configs/quickstart.yaml "$@"
S=data/sample
python eval.py --model bm25 --data $S/qasc $S/vitaminc $S/cosmosqa --zero-shot $S/ropes \
  --split test --out "$OUT/eval-bm25" --no-progress
python eval.py --model "$OUT/final" --data $S/qasc $S/vitaminc $S/cosmosqa --zero-shot $S/ropes \
  --split test --out "$OUT/eval" --cache-dir '' --no-progress
python eval.py --compare "$OUT/eval-bm25" "$OUT/eval" --out "$OUT/compare"
python export.py --model "$OUT/final" --results "$OUT/eval" --baseline "$OUT/eval-bm25" --out "$OUT/hub"
echo "Hub-ready folder (model card, weights, code, adapter, sentence-transformers files, handler, widget): $OUT/hub"
