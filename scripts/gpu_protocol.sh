#!/usr/bin/env bash
# The protocol's main systems on one GPU in one call (issue 29, item 4): every (system, seed) run of
# configs/bbir-protocol.yaml's gpu-epoch profile (one epoch, dev selection at 1/3, 2/3 and the end, bf16) trained side
# by side on one H200, evaluated per collection and pooled, collected and reported, inside the device's 10 minutes.
#
#   bash scripts/gpu_protocol.sh [--dry-run] [--pack DIR] [--systems "multitask prefix hyper"]
#                                [--seeds "42 43 44 45 46"] [--max-steps N] [--budget SECONDS]
#
# 1. Here, once (the network only for pip download): bash scripts/gpu_protocol.sh --pack .gpu-pack
#    writes .gpu-pack/proj (the tracked and untracked-not-ignored files but docs/ and outputs/), .gpu-pack/proj/.carry
#    (fp16 MiniLM + bbir.tar.xz: ../shared/tools/pack-gpu-carry.sh) and .gpu-pack/whl (scripts/gpu_image.sh's
#    WHEELS: what the runs import that the image lacks, for python 3.12; neither faiss nor matplotlib is needed: exact
#    search runs on torch and the evaluations draw no figures), and checks that the pack stays under 64 MiB
#    (measured: 59.6 MiB). scripts/gpu_checks.sh runs from the same pack.
# 2. The device call (the checkout's own working tree travels too, and the whole must stay under 64 MiB: docs/ alone
#    is ~90 MB, so make the call from a checkout without it, e.g. `git sparse-checkout set --no-cone '/*' '!/docs/'`):
#      run(carry=[".gpu-pack"], timeout_s=600, command="cd .gpu-pack && bash proj/scripts/gpu_protocol.sh")
#    What comes back ($OUT, 3 files): gpu_protocol.tgz (results/: what `protocol.py report` reads, every run without
#    weights; logs/: each run's log tail, the miners', the preparation's, GPU use every 15 s; docs/RESULTS.md),
#    summary.log and RESULTS.md (the report's section).
# 3. Here: tar xzf gpu_protocol.tgz -C X && python scripts/protocol.py report --section gpu --root X/results
#    (add --docs DIR to write elsewhere than docs/RESULTS.md)
#
# The 10 minutes, planned from ../shared/docs/STACK-NOTES.md ("Seen on the H200"), T in seconds from the start:
#   setup       ~20 s  the wheels into a --target folder, bbir unpacked, fp16 MiniLM back to float32 (10 s there)
#   prepare    ~110 s  side by side: the BM25 negatives of the six training collections, one process each (vitaminc
#                      ~90 s on one core: the critical path) | the frozen passage table, 6 corpora in float32 as
#                      train.py reads it (~25 s); at most 240 s. Beside them, not waited for: the untrained backbone
#                      evaluated per collection and pooled (~70 s; its own row; it fills the bf16 embedding cache
#                      that every run's evaluation reads minutes later).
#   runs    to T=555   15 `protocol.py run --profile gpu-epoch --only SYSTEM --seeds S` side by side, one CPU thread
#                      each: ~45 s before the first step (T ~ 175), then training (three dev evaluations, ~5-10 s
#                      each) until the training deadline (T = budget - 130 = 440), where a training still running
#                      is stopped (SIGTERM: a checkpoint) and its run evaluated from its dev-selected model so far;
#                      evaluation, per collection then pooled, from the cache: ~60-90 s side by side; killed at T=555.
#   collect, report, tarball ~15 s; the budget (570 s) leaves 30 s of the call's 600.
# Estimate: one run alone trained 24 steps/s, four side by side 15-30 steps/s each. Fifteen share one GPU by time
# slicing and 16 cores: ~8-12 steps/s each is our guess (not measured), so one epoch (3,330 steps) needs 280-420 s
# where ~265 s are left (T 175-440). One epoch, the default, fits only at ~13 steps/s: slower runs stop at the deadline
# and are evaluated from their best dev checkpoint so far (step 1,110 or 2,220; the report's speed table and the
# summary name them). --max-steps 2220 (dev at 740, 1,480, 2,220; the schedule complete) is the largest that fits at
# ~8.5 steps/s; --seeds "42 43 44" (9 runs side by side) makes the epoch likelier to fit.
#
# --dry-run: the same steps on this CPU on tiny inputs (a tiny random BERT with MiniLM's tokenizer, saved in fp16 and
# turned back; the sample collections of data/sample; 4 steps; 2 systems x 2 seeds unless told), into $OUT
# (default outputs/gpu_protocol); 2-3.5 minutes on 2 busy cores. The wheels are not installed (the venv has them).
set -uo pipefail
T0=$(date +%s)
DRY=0 PACK="" SYSTEMS="" SEEDS="" MAX_STEPS="" BUDGET=""
while (( $# )); do
  case $1 in
    --dry-run) DRY=1 ;;
    --pack) PACK=${2:?--pack DIR}; shift ;;
    --systems) SYSTEMS=${2:?--systems \"NAME ...\"}; shift ;;
    --seeds) SEEDS=${2:?--seeds \"S ...\"}; shift ;;
    --max-steps) MAX_STEPS=${2:?--max-steps N}; shift ;;
    --budget) BUDGET=${2:?--budget SECONDS}; shift ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_protocol.sh: unknown option $1 (--help)" >&2; exit 2 ;;
  esac
  shift
done
cd "$(dirname "$0")/.." || exit 2
PROJ=$PWD
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# bm25s imports jax, and JAX on a GPU takes 75% of its memory in every process that starts it: keep it on the CPU,
# before anything imports bm25s (hyper_retrieval/search/bm25.py sets the same defaults)
export JAX_PLATFORMS=cpu XLA_PYTHON_CLIENT_PREALLOCATE=false
. scripts/gpu_image.sh  # IMAGE, WHEELS, install_wheels
LIMIT=$((64 * 1024 * 1024))

# ---------------------------------------------------------------- --pack DIR: here, what the device call carries
if [[ -n $PACK ]]; then
  PACK=$(realpath -m "$PACK")
  if [[ $PACK == "$PROJ" || $PACK == "$PROJ"/* ]] && ! git check-ignore -q "$PACK/"; then
    echo "--pack $PACK: inside the checkout and not git-ignored (it would pack itself); add it to .gitignore" >&2
    exit 2
  fi
  rm -rf "$PACK/proj" "$PACK/whl" && mkdir -p "$PACK/proj" "$PACK/whl" || exit 1
  git ls-files -z --cached --others --exclude-standard | grep -zv '^\(docs\|outputs\)/' \
    | while IFS= read -r -d '' f; do [[ -f $f ]] && printf '%s\0' "$f"; done \
    | tar cf - --null -T - | tar xf - -C "$PACK/proj" || { echo "copying the code failed" >&2; exit 1; }
  PYTHON=$PY bash ../shared/tools/pack-gpu-carry.sh "$PACK/proj/.carry" || exit 1
  # shellcheck disable=SC2086  # one wheel a word
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$PACK/whl" $WHEELS || exit 1
  mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
  printf '  %-26s %s\n' "proj (the code)" "$(mib "$(du -sb --exclude=.carry "$PACK/proj" | cut -f1)")"
  for part in proj/.carry/minilm proj/.carry/bbir.tar.xz whl; do
    printf '  %-26s %s\n' "$part" "$(mib "$(du -sb "$PACK/$part" | cut -f1)")"
  done
  size=$(du -sb "$PACK" | cut -f1)
  tree=$(git ls-files -z --cached --others --exclude-standard \
         | while IFS= read -r -d '' f; do [[ -f $f && $PWD/$f != "$PACK"/* ]] && printf '%s\0' "$f"; done \
         | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  echo "pack $PACK: $(mib "$size") (limit 64 MiB); this checkout's working tree, which travels beside it: $(mib "$tree")"
  if (( size >= LIMIT )); then echo "the pack is over 64 MiB" >&2; exit 1; fi
  if (( size + tree >= LIMIT )); then
    echo "together $(mib $((size + tree))): over 64 MiB; make the call from a checkout without docs/ (see the header)"
  fi
  if [[ $PACK != "$PROJ"/* ]]; then echo "a call carries folders of the checkout only: pack inside it (e.g. .gpu-pack)"; fi
  echo "device call: run(carry=[\"${PACK#"$PROJ"/}\"], timeout_s=600, command=\"cd ${PACK#"$PROJ"/} && bash proj/scripts/gpu_protocol.sh\")"
  exit 0
fi

# ---------------------------------------------------------------- the run (on the GPU, or --dry-run here)
if (( DRY )); then
  SYSTEMS=${SYSTEMS:-"multitask hyper"} SEEDS=${SEEDS:-"42 43"} MAX_STEPS=${MAX_STEPS:-4} BUDGET=${BUDGET:-900}
else
  SYSTEMS=${SYSTEMS:-"multitask prefix hyper"} SEEDS=${SEEDS:-"42 43 44 45 46"} BUDGET=${BUDGET:-570}
fi
OUT=${OUT:-outputs/gpu_protocol}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 2
WORK=$(mktemp -d)
RES=$WORK/res LOGS=$WORK/res/logs ROOT=$WORK/runs CACHE=$WORK/cache
mkdir -p "$LOGS" "$ROOT" "$CACHE"
END=$((T0 + BUDGET))
TRAIN_STOP=$((END - 130))  # the training deadline: a checkpoint, two evaluations, collect and the tarball after it
declare -A PHASES=()
PHASE_ORDER=()
SAMPLER=""
say() { echo "[$(( $(date +%s) - T0 ))s] $*" | tee -a "$RES/summary.log"; }
phase() { PHASES[$1]=$(( $(date +%s) - ${2} )); PHASE_ORDER+=("$1"); }
tail_log() { tr '\r' '\n' < "$1" | grep -v 'it/s\]\|s/it\]' | tail -n "${2:-60}"; }
finish() {  # always: the logs' tails and whatever results exist into $OUT/gpu_protocol.tgz
  [[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null
  mkdir -p "$RES/logs/tails"
  for f in "$LOGS"/*.log; do [[ -f $f ]] && tail_log "$f" 80 > "$RES/logs/tails/$(basename "$f")"; done
  say "wall ${BUDGET:+(budget ${BUDGET}s) }$(( $(date +%s) - T0 ))s; results in $OUT/gpu_protocol.tgz"
  # the full logs stay out of the tarball (the tails are in it), except the short ones
  find "$LOGS" -maxdepth 1 -name '*.log' -size +256k -delete
  tar czf "$OUT/gpu_protocol.tgz" -C "$RES" . && cp "$RES/summary.log" "$OUT/summary.log"
  [[ -f $RES/docs/RESULTS.md ]] && cp "$RES/docs/RESULTS.md" "$OUT/RESULTS.md"
  if (( DRY )); then rm -rf "$WORK"; fi  # on the GPU the machine goes back bare: no time spent deleting 15 runs
}
trap finish EXIT
fail() { say "FAILED: $*"; exit 1; }
logged() {  # NAME LIMIT COMMAND...: COMMAND under `timeout LIMIT` (its process group killed), output in logs/NAME.log
  local name=$1 limit=$2; shift 2
  local start
  start=$(date +%s)
  echo "== $name (at $((start - T0))s, at most ${limit}s): $*" > "$LOGS/$name.log"
  timeout -k 10 "$limit" "$@" >> "$LOGS/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc $rc after $(( $(date +%s) - start ))s" >> "$LOGS/$name.log"
  return $rc
}
say "gpu_protocol.sh$( ((DRY)) && echo ' --dry-run'): systems [$SYSTEMS], seeds [$SEEDS], ${MAX_STEPS:-one epoch of} steps; \
budget ${BUDGET}s, training deadline at $((TRAIN_STOP - T0))s"

# ---- setup: wheels, data, float32 backbone
t=$(date +%s)
PREP_THREADS=4  # the passage table's and the backbone's evaluation (GPU work); miners and runs get one thread each
if (( DRY )); then
  export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PREP_THREADS=1  # two cores: more threads a process only spin
  export PYTHONPATH=$PROJ${PYTHONPATH:+:$PYTHONPATH}
  DATA=$PROJ/data/sample
  CARRY=$WORK/carry  # a tiny random BERT (hidden 32, 2 layers) with MiniLM's tokenizer, in fp16 as the pack holds it
  logged setup-backbone 120 "$PY" - "$CARRY/minilm" <<'PYTHON' || fail "the tiny backbone (logs/setup-backbone.log)"
import sys
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, BertConfig, BertModel
from hyper_retrieval.core.backbones import resolve_backbone
shape = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=30522)
BertModel(BertConfig(**shape)).save_pretrained(sys.argv[1])
AutoTokenizer.from_pretrained(resolve_backbone("sentence-transformers/all-MiniLM-L6-v2")).save_pretrained(sys.argv[1])
weights = f"{sys.argv[1]}/model.safetensors"  # fp16 weights beside a float32 config, as pack-gpu-carry.sh leaves them
save_file({k: v.half() for k, v in load_file(weights).items()}, weights, metadata={"format": "pt"})
PYTHON
else
  logged setup-wheels 120 env PY="$PY" bash -c '. scripts/gpu_image.sh && install_wheels "$@"' - ../whl "$WORK/site" \
    || fail "installing the wheels (logs/setup-wheels.log; make the pack with --pack DIR, then run DIR/proj/scripts/gpu_protocol.sh)"
  export PYTHONPATH=$WORK/site:$PROJ${PYTHONPATH:+:$PYTHONPATH}
  DATA=$(cd .. && pwd)/shared/data/bbir
  CARRY=$PROJ/.carry
  if [[ ! -d $DATA ]]; then
    [[ -f $CARRY/bbir.tar.xz ]] || fail "no $DATA and no $CARRY/bbir.tar.xz (--pack)"
    { mkdir -p "$DATA" && tar xJf "$CARRY/bbir.tar.xz" -C "$DATA"; } || fail "unpacking bbir"
  fi
  { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; free -g; } > "$LOGS/machine.log" 2>&1
fi
BACKBONE=$WORK/minilm32
# shellcheck disable=SC2086  # a distribution a word
logged setup-float32 120 "$PY" - "$CARRY/minilm" "$BACKBONE" "$DRY" $IMAGE $(sed 's/==[^ ]*//g' <<< "$WHEELS") <<'PYTHON' \
  || fail "the float32 backbone, the imports or the GPU (logs/setup-float32.log)"
import json, shutil, sys
from safetensors.torch import load_file, save_file
source, target, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
shutil.copytree(source, target)
weights = load_file(f"{source}/model.safetensors")
save_file({k: v.float() for k, v in weights.items()}, f"{target}/model.safetensors", metadata={"format": "pt"})
config = json.load(open(f"{target}/config.json"))  # transformers loads in the config's dtype: float32 it must say
config.update({k: "float32" for k in ("torch_dtype", "dtype") if k in config})
json.dump(config, open(f"{target}/config.json", "w"), indent=2)
print(f"{len(weights)} tensors to float32 in {target} ({sorted({str(v.dtype) for v in weights.values()})} before)")
from importlib.metadata import PackageNotFoundError, version
def installed(name):
    try:
        return version(name)
    except PackageNotFoundError:
        return "missing"
print("image and wheels:", ", ".join(f"{name} {installed(name)}" for name in sys.argv[4:]))
import bm25s, pytrec_eval, Stemmer, datasets, evaluate, torch  # noqa: E401,F401  what the wheels brought, the GPU
print(f"CUDA {torch.cuda.is_available()}")
assert torch.cuda.is_available() or dry, "no CUDA device: train.py and eval.py would run on the CPU"
PYTHON
phase setup "$t"
say "set up: $(tail -n 2 "$LOGS/setup-float32.log" | head -n 1)"

# The protocol file and the overrides every step shares (the caches under $WORK: nothing written into the checkout)
SETS=("model.backbone=$BACKBONE" "data.negatives_cache_dir=$CACHE/negatives" "train.embedding_cache_dir=$CACHE/embeddings")
if [[ -n $MAX_STEPS ]]; then
  third=$(( (MAX_STEPS + 2) / 3 ))  # dev selection (and checkpoints) at 1/3, 2/3 and the end
  SETS+=("optim.max_steps=$MAX_STEPS" "train.eval_every=$third" "train.save_every=$third")
fi
PROTOCOL=configs/bbir-protocol.yaml
if (( DRY )); then  # the sample collections: three trained on, ropes zero-shot; small batches and passages
  PROTOCOL=$WORK/protocol.yaml
  "$PY" - "$PROTOCOL" "$DATA" <<'PYTHON' || fail "the dry run's protocol file"
import sys
import yaml
protocol = yaml.safe_load(open("configs/bbir-protocol.yaml"))
protocol.update(data_root=sys.argv[2], in_domain=["qasc", "vitaminc", "cosmosqa"], zero_shot=["ropes"])
open(sys.argv[1], "w").write(yaml.safe_dump(protocol, sort_keys=False))
PYTHON
  SETS+=("data.collections=[{path: data/sample/qasc}, {path: data/sample/vitaminc}, {path: data/sample/cosmosqa}]"
         train.batch_size=8 data.num_negatives=2 model.max_passage_length=64 model.max_query_length=32 train.log_every=2)
fi
# shellcheck disable=SC2206  # a name a word
SYSTEM_LIST=($SYSTEMS) SEED_LIST=($SEEDS)
RUN_ARGS=(--protocol "$PROTOCOL" --profile gpu-epoch --root "$ROOT" --no-hybrid --no-plots --cache-dir "$CACHE/embeddings")

# ---- prepare, side by side: BM25 negatives (a process per training collection), the frozen passage table, the backbone
t=$(date +%s)
cat > "$WORK/prepare.py" <<'PYTHON'
"""mine: the BM25 negatives of every training collection, a process each (the first in this one; logs in $PREP_LOGS);
mine-one I: collection I's;
table: the frozen passage encoder's vectors of every training corpus (float32, as train.py looks them up).
Settings: the protocol's run $PREP_SYSTEM under $PREP_PROFILE, then the overrides given (as protocol.py run --set)."""
import os
import subprocess
import sys
from pathlib import Path

from experiments.protocol import load_protocol
from hyper_retrieval.training.config import load_config

mode, args = sys.argv[1], sys.argv[2:]
protocol, runs = load_protocol(Path(os.environ["PREP_PROTOCOL"]))
run = next(r for r in runs if r.name == os.environ["PREP_SYSTEM"])
overrides = args[1:] if mode == "mine-one" else args
cfg = load_config(run.config, [*protocol["profiles"][os.environ["PREP_PROFILE"]], *run.overrides, *overrides,
                               f"model.passage_windows={run.windows}"])
if mode.startswith("mine"):
    from hyper_retrieval.training.examples import load_task_examples

    logs = Path(os.environ.get("PREP_LOGS", "."))
    others = cfg.data.collections[1:] if mode == "mine" else []
    miners = [subprocess.Popen([sys.executable, __file__, "mine-one", str(i), *overrides],
                               stdout=open(logs / f"mine-{c.task_name}.log", "w"), stderr=subprocess.STDOUT)
              for i, c in enumerate(others, start=1)]
    collection = cfg.data.collections[int(args[0]) if mode == "mine-one" else 0]
    _, examples = load_task_examples(collection, cfg.data)
    print(f"{collection.task_name}: negatives of {len(examples)} training queries in {cfg.data.negatives_cache_dir}")
    failed = [c.task_name for c, m in zip(others, miners) if m.wait()]
    sys.exit(f"mining failed: {failed} (logs/mine-*.log)" if failed else 0)
else:
    import torch

    from hyper_retrieval.data.beir import load_collection
    from hyper_retrieval.training.passage_table import PassageTable, has_frozen_passage_encoder
    from hyper_retrieval.training.models import build_model, passage_windows

    model = build_model(cfg.model, cfg.data.task_names)
    if not has_frozen_passage_encoder(model):
        print(f"{run.name}: no frozen passage encoder, no passage table to prepare")
        sys.exit(0)
    corpora = {}
    for c in cfg.data.collections:
        collection = load_collection(c.path, cfg.data.train_split)
        corpora[collection.name] = collection.corpus
    device = "cuda" if torch.cuda.is_available() else "cpu"
    PassageTable.encode(model.to(device), corpora, cfg.train.embedding_cache_dir, show_progress=False,
                        windows=passage_windows(cfg.model))
    print(f"passage table of {sum(map(len, corpora.values()))} passages ({', '.join(corpora)}) on {device}")
PYTHON
export PREP_PROTOCOL=$PROTOCOL PREP_PROFILE=gpu-epoch PREP_SYSTEM=${SYSTEM_LIST[0]} PREP_LOGS=$LOGS
OMP_NUM_THREADS=1 logged prepare-mine 240 "$PY" "$WORK/prepare.py" mine "${SETS[@]}" & mine=$!
OMP_NUM_THREADS=$PREP_THREADS logged prepare-table 240 "$PY" "$WORK/prepare.py" table "${SETS[@]}" & table=$!
OMP_NUM_THREADS=$PREP_THREADS logged prepare-backbone 240 "$PY" scripts/protocol.py run "${RUN_ARGS[@]}" --only backbone --set "${SETS[@]}" & base=$!
wait $mine || fail "mining the BM25 negatives (logs/prepare-mine.log, logs/mine-*.log)"
wait $table || fail "the passage table (logs/prepare-table.log)"
phase prepare "$t"
say "prepared: BM25 negatives of $(find "$CACHE/negatives" -name '*.json' | wc -l) collections, the passage table \
(the backbone's evaluation goes on beside the runs: they evaluate minutes later)"

# ---- the runs, side by side: every (system, seed), each its own protocol.py process
t=$(date +%s)
if (( ! DRY )); then  # GPU use every 15 s
  while sleep 15; do echo "$(( $(date +%s) - T0 ))s $(nvidia-smi --query-gpu=utilization.gpu,memory.used \
    --format=csv,noheader 2>&1 | tr '\n' ' ')" >> "$LOGS/gpu-use.log"; done &
  SAMPLER=$!
fi
declare -A PIDS=()
for system in "${SYSTEM_LIST[@]}"; do
  for seed in "${SEED_LIST[@]}"; do
    OMP_NUM_THREADS=1 TQDM_MININTERVAL=20 logged "run-$system-$seed" $((END - $(date +%s) - 15)) \
      "$PY" scripts/protocol.py run "${RUN_ARGS[@]}" --only "$system" --seeds "$seed" \
      --stop-training-at "$TRAIN_STOP" --set "${SETS[@]}" &
    PIDS[$system-$seed]=$!
  done
done
say "started ${#PIDS[@]} runs side by side"
wait $base || say "the backbone's evaluation failed (logs/prepare-backbone.log): each run encodes the test corpora"
entries() { find "$CACHE/embeddings" -maxdepth 1 -name '*.vectors' 2> /dev/null | wc -l; }
before=$(entries)
say "the backbone evaluated: $before embedding cache entries (the runs should add none)"
failed=()
for key in "${!PIDS[@]}"; do wait "${PIDS[$key]}" || failed+=("$key"); done
[[ -n $SAMPLER ]] && kill "$SAMPLER" 2>/dev/null && SAMPLER=""
phase runs "$t"
on_gpu=$(grep -l "process(es) on cuda" "$LOGS"/run-*.log 2>/dev/null | wc -l)
stopped=$(grep -l "the deadline has passed" "$LOGS"/run-*.log 2>/dev/null | wc -l)
say "runs done: $(( ${#PIDS[@]} - ${#failed[@]} ))/${#PIDS[@]} succeeded${failed[*]:+ (failed: ${failed[*]})}; \
$on_gpu trained on cuda, $stopped stopped at the training deadline; embedding cache entries $before -> $(entries)"

# ---- collect (results without weights) and report
t=$(date +%s)
mkdir -p "$RES/results" "$RES/docs"
# shellcheck disable=SC2086
logged collect 60 "$PY" scripts/protocol.py collect --protocol "$PROTOCOL" --root "$ROOT" --to "$RES/results" \
  --only $SYSTEMS backbone --seeds $SEEDS || say "collect failed (logs/collect.log)"
phase collect "$t"
phases_json=$(for p in "${PHASE_ORDER[@]}"; do printf '"%s": %s, ' "$p" "${PHASES[$p]}"; done)
printf '{"phases": {%s}, "wall_s": %s, "systems": [%s], "seeds": [%s], "max_steps": %s, "dry_run": %s, "budget_s": %s}\n' \
  "${phases_json%, }" "$(( $(date +%s) - T0 ))" "$(printf '"%s", ' "${SYSTEM_LIST[@]}" | sed 's/, $//')" \
  "$(printf '%s, ' "${SEED_LIST[@]}" | sed 's/, $//')" "${MAX_STEPS:-null}" \
  "$( ((DRY)) && echo true || echo false)" "$BUDGET" > "$RES/results/gpu_protocol.json"
# shellcheck disable=SC2086
logged report 90 "$PY" scripts/protocol.py report --protocol "$PROTOCOL" --section gpu --root "$RES/results" \
  --docs "$RES/docs" --only $SYSTEMS backbone || say "the report failed (logs/report.log)"
say "phases (s): $(for p in "${PHASE_ORDER[@]}"; do printf '%s %s, ' "$p" "${PHASES[$p]}"; done)report"
(( ${#failed[@]} == 0 )) && [[ -f $RES/docs/RESULTS.md ]]
