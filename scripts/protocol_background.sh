#!/usr/bin/env bash
# Long protocol runs from a clone at a fixed commit, committing each run's results into another repository as it
# finishes, so that work in that repository's tree cannot disturb the runs and no finished run waits on the rest.
#
#   git clone . ../exp && cp -r .venv ../exp/   # or: (cd ../exp && bash scripts/setup_env.sh)
#   (cd ../exp && nohup bash scripts/protocol_background.sh /work/main cpu-epoch outputs/bbir-epoch \
#        docs/results/bbir-epoch hyper multitask prefix > protocol.log 2>&1 &)
#
# Arguments: the repository that receives the results, a protocol profile, the output root here, the results
# folder there, then run names in the order to do them. Run it again after a stop: finished steps are skipped,
# an interrupted training resumes from its last checkpoint (scripts/protocol.py). Extra protocol.py run flags go in
# PROTOCOL_FLAGS (e.g. PROTOCOL_FLAGS=--no-hybrid).
set -euo pipefail
cd "$(dirname "$0")/.."
target=$1 profile=$2 root=$3 results=$4
shift 4
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
commit=$(git rev-parse --short HEAD)
for name in "$@"; do
  # shellcheck disable=SC2086
  python scripts/protocol.py run --profile "$profile" --root "$root" --only "$name" ${PROTOCOL_FLAGS:-}
  python scripts/protocol.py collect --root "$root" --only "$name" --to "$target/$results"
  # only the results folder is committed, whatever else is staged there; retried while another git holds the index
  for attempt in 1 2 3 4 5; do
    if git -C "$target" add -- "$results" && { git -C "$target" diff --cached --quiet -- "$results" ||
        git -C "$target" commit --quiet -m "Results: $name ($profile profile, code at $commit)" -- "$results"; }; then
      break
    fi
    echo "commit of $name failed (attempt $attempt), retrying"; sleep 10
  done
done
