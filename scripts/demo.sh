#!/usr/bin/env bash
# `make demo`: the CPU demo. Makes the synthetic caption and grounding data,
# trains ofa_micro with the encouraging loss on 2 MPI ranks for each task
# (the presets demo_caption_el and demo_refcoco_el), scores the untrained and
# the trained model on the validation set, and writes an HTML report.
#
#   ELFIN_DEMO_DIR   where everything goes (default: demo-runs/ in the clone)
#   ELFIN_DEMO_RANKS ranks per run (default: 2)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
elfin="$repo/target/release/elfin"
trainer="$repo/target/release/elfin-train"
dir=${ELFIN_DEMO_DIR:-$repo/demo-runs}
ranks=${ELFIN_DEMO_RANKS:-2}
mkdir -p "$dir"
cd "$dir"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
start=$SECONDS

# The trainer command of a preset, turned into `elfin-train eval` of CHECKPOINT
# (or of the untrained model when CHECKPOINT is empty); prints the scores line.
evaluate() { # preset, predictions-out, checkpoint
  local cmd
  cmd=$("$elfin" presets show "$1" --data-root "$dir" | tail -n1)
  cmd=${cmd/" train "/" eval --out=$2 ${3:+--checkpoint=$3} "}
  eval "$cmd" | tail -n1
}

score_of() { # JSON line, key
  python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2]))' "$1" "$2"
}

declare -A metric=([demo_caption_el]=cider [demo_refcoco_el]=score)
declare -A save=([demo_caption_el]=demo_checkpoints/caption_el [demo_refcoco_el]=demo_checkpoints/refcoco_el)
summary=()
for preset in demo_caption_el demo_refcoco_el; do
  echo "== $preset: training on $ranks CPU ranks (elfin launch --preset $preset --nproc-per-node $ranks --cpu)"
  rm -rf "${save[$preset]}"
  "$elfin" launch --preset "$preset" --nproc-per-node "$ranks" --cpu --data-root "$dir"
  echo "== $preset: validation of the untrained and the trained model"
  before=$(evaluate "$preset" "${save[$preset]}/predictions_untrained.jsonl" "")
  after=$(evaluate "$preset" "${save[$preset]}/predictions_best.jsonl" "${save[$preset]}/checkpoint_best.safetensors")
  summary+=("$(printf '%-16s %-6s untrained %-7s trained %-7s' "$preset" "${metric[$preset]}" \
    "$(score_of "$before" "${metric[$preset]}")" "$(score_of "$after" "${metric[$preset]}")")")
done

"$elfin" report "${save[demo_caption_el]}" "${save[demo_refcoco_el]}" --out "$dir/report.html" >/dev/null

echo
echo "== elfin demo done in $((SECONDS - start)) s"
printf '%s\n' "${summary[@]}"
echo "checkpoints and metrics.jsonl: $dir/demo_checkpoints/{caption_el,refcoco_el}/"
echo "per-rank logs:                 $dir/demo_logs/rank-N-HOST.log"
echo "report (plots, predictions):   $dir/report.html"
