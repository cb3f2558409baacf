#!/usr/bin/env bash
# What only a GPU can measure, as one prepared run (about 8 minutes on one H200; every step has its own time limit).
# Logs go to $OUT (the device tool's folder that comes back; default outputs/gpu_checks):
#   1. eval.log     bench/eval.py: corpus encoding, ours against sentence-transformers, cold and from cached token ids,
#                   on 40,000 bbir passages (targets: >= 3x cold, >= 10x cached); search, flat on the GPU (torch)
#   2. train.log    bench/train.py: training queries/s of the plain model against the hyper-prompt model
#   3. encode.log   encode.py: nq_ckc encoded in shards of 5,000 on the GPU, then run again (every shard cached)
#   4. scale.log    bench/scale.py --kinds flat flat-torch: exact search streamed on the CPU against the vectors
#                   held on the GPU, real bbir vectors and 10^6 synthetic ones (scale.json, scale.md beside it)
#   5. steps.log    train.py alone, the protocol's HypeR config in bf16 on three of its collections (cosmosqa, qasc,
#                   quoref: their BM25 negatives mine in seconds): steps/s over 600 steps, then launch to the first
#                   step again with every cache warm (targets: >= 150 steps/s, <= 15 s)
#   6. profile.log  bench/profile_step.py on the same data with the passages encoded (trainable, as bench/train.py
#                   has them), in bf16 and in float32: the kernels by GPU time, to tell why bf16 was the slower there
# The GPU image has torch, transformers, accelerate, sentence-transformers but no faiss (no step needs it) and
# none of scripts/gpu_image.sh's WHEELS (installed from the pack's whl/).
#
# On the GPU machine (../shared does not travel; pack what it needs first, here, the same pack as gpu_protocol.sh's):
#   bash scripts/gpu_protocol.sh --pack .gpu-pack      # the code, fp16 MiniLM, bbir, the wheels the image lacks
#   device run, carry [".gpu-pack"]:  cd .gpu-pack && bash proj/scripts/gpu_checks.sh
# Here, to check the script itself: the same steps on the CPU on tiny inputs, and the GPU-only parts skipped:
#   bash scripts/gpu_checks.sh --dry-run
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT=${OUT:-outputs/gpu_checks}
mkdir -p "$OUT"
# The benches run one process at a time: the tokenizer may use every core (false would keep it on one, and encoding
# on a 16-core GPU machine then waits for a single tokenizing thread)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
PY=${PYTHON:-python3}  # the GPU image has no `python`

# Weights and data: the carried copies on the GPU machine, else the pip weights and ../shared/data/bbir.
BACKBONE=sentence-transformers/all-MiniLM-L6-v2
[[ -d .carry/minilm ]] && BACKBONE=$PWD/.carry/minilm
if [[ ! -d ../shared/data/bbir ]]; then
  [[ -f .carry/bbir.tar.xz ]] || { echo "no ../shared/data/bbir and no .carry/bbir.tar.xz (pack-gpu-carry.sh)"; exit 2; }
  mkdir -p ../shared/data/bbir && tar xJf .carry/bbir.tar.xz -C ../shared/data/bbir
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if (( ! DRY )); then  # the wheels the image lacks (the dry run's venv has them)
  . scripts/gpu_image.sh
  PY=$PY install_wheels ../whl "$TMP/site" || exit 2
  export PYTHONPATH=$TMP/site${PYTHONPATH:+:$PYTHONPATH}
fi
if (( DRY )); then  # a tiny random BERT (hidden 32, 2 layers) with MiniLM's tokenizer stands in for the weights
  BACKBONE=$TMP/tiny-backbone
  $PY - "$BACKBONE" <<'PYTHON' || exit 2
import sys
from transformers import AutoTokenizer, BertConfig, BertModel
from hyper_retrieval.core.backbones import resolve_backbone
shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=30522)
BertModel(BertConfig(**shape)).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(sys.argv[1])
PYTHON
  EVAL="--passages 48 --queries 16 --rounds 2 --search-rounds 1 --batch-size 8 --device cpu"
  TRAIN="--batch-size 2 --negatives 1 --steps 1 --rounds 1 --warmup 1 --device cpu"
  CORPUS=../shared/data/bbir/ropes SHARD=200
  SCALE="--sizes 2000 --queries 16 --collections ropes multirc --encode-docs 0 --rounds 1"
  STEPS=6 PROFILE_STEPS=2 RUN_DATA="[{path: data/sample/cosmosqa}, {path: data/sample/qasc}, {path: data/sample/vitaminc}]"
  SETTINGS=(train.batch_size=8 data.num_negatives=2 model.max_passage_length=64 model.max_query_length=32
            train.log_every=2 optim.mixed_precision=no)
else
  EVAL="--passages 40000 --batch-size 256 --rounds 8 --also-dtype float32 --threads 16"  # ST in bf16 and float32
  TRAIN="--batch-size 32 --passage-length 256 --rounds 3 --steps 4"
  CORPUS=../shared/data/bbir/nq_ckc SHARD=5000
  SCALE="--sizes 1000000 --queries 1000 --encode-docs 0 --threads 16"
  STEPS=600 PROFILE_STEPS=20 RUN_DATA="[{path: ../shared/data/bbir/cosmosqa}, {path: ../shared/data/bbir/qasc},
                       {path: ../shared/data/bbir/quoref}]"
  SETTINGS=(train.log_every=50 optim.mixed_precision=bf16)
fi

status=0
step() {  # step NAME LIMIT_SECONDS COMMAND...: runs it, logs to $OUT/NAME.log, records a failure and goes on
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date +%T), at most ${limit}s): $*" | tee "$OUT/$name.log"
  timeout "$limit" "$@" 2>&1 | grep --line-buffered -v "it/s\]\|s/it\]" | tee -a "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: rc $rc" | tee -a "$OUT/$name.log"
  (( rc == 0 )) || status=1
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no GPU (dry run)"
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
'transformers', transformers.__version__)"; } > "$OUT/machine.log" 2>&1

step eval 150 $PY bench/eval.py $EVAL --backbone "$BACKBONE"
step train 90 $PY bench/train.py $TRAIN --backbone "$BACKBONE"
MODEL=$TMP/model
$PY -c "import sys; from modeling_hyper import HyperRetrieverModel as M; M.from_backbone(sys.argv[1]).save_pretrained(sys.argv[2])" \
  "$BACKBONE" "$MODEL" > /dev/null 2>&1
CACHE=$TMP/cache
step encode 90 bash -c "$PY encode.py --model $MODEL --corpus $CORPUS --shard-docs $SHARD --cache-dir $CACHE \
  --no-progress && $PY encode.py --model $MODEL --corpus $CORPUS --shard-docs $SHARD --cache-dir $CACHE --no-progress"
step scale 150 $PY bench/scale.py $SCALE --kinds flat flat-torch --backbone "$BACKBONE" --cache-dir "$CACHE" \
  --out "$OUT" --extrapolate
RUN_SETTINGS=("model.backbone=$BACKBONE" data.dev_split=null "data.collections=$RUN_DATA" "${SETTINGS[@]}")
step steps 240 $PY bench/train_run.py --config configs/bbir-hyper.yaml --steps $STEPS --cache-dir "$TMP/run-cache" \
  "${RUN_SETTINGS[@]}"
for precision in bf16 no; do  # on the caches the runs above filled (bench/train_run.py's layout under --cache-dir)
  step "profile-$precision" 150 $PY bench/profile_step.py --config configs/bbir-hyper.yaml --steps $PROFILE_STEPS \
    --rows 25 "${RUN_SETTINGS[@]}" model.freeze_passage_encoder=false "optim.mixed_precision=$precision" \
    "data.negatives_cache_dir=$TMP/run-cache/negatives" "train.embedding_cache_dir=$TMP/run-cache/embeddings"
done
cat "$OUT"/profile-*.log > "$OUT/profile.log" && rm -f "$OUT"/profile-*.log
echo "gpu checks: $( ((status)) && echo 'a step failed' || echo 'every step ran' ); logs in $OUT"
exit $status
