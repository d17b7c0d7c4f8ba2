#!/usr/bin/env bash
# The one command for a machine with an NVIDIA GPU. Takes the bundle made by
# `make gpu-bundle` (this script sits inside it), runs every #[ignore]d GPU
# test and the GPU benchmarks, and writes a summary and logs to OUT_DIR.
#
#   bash gpu-bundle/gpu-check.sh OUT_DIR
#
# Needs: an NVIDIA driver and a python3 with torch 2.11 (CUDA build), whose
# libtorch, CUDA runtime, NCCL and NVRTC libraries the binaries use.
set -uo pipefail
bundle=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: gpu-check.sh OUT_DIR}
mkdir -p "$out/logs"
summary="$out/summary.txt"
: > "$summary"
note() { echo "$*" | tee -a "$summary"; }

py=${PYTHON:-python3}
torch_dir=$("$py" -c 'import os, torch; print(os.path.dirname(torch.__file__))') \
  || { note "FAIL: no python with torch found (set PYTHON=...)"; exit 1; }
site=$(dirname "$torch_dir")
nv_libs=$(find "$site/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | tr '\n' ':')
export LD_LIBRARY_PATH="$bundle/lib:$torch_dir/lib:${nv_libs}${LD_LIBRARY_PATH:-}"
export OPAL_PREFIX="$bundle/ompi/usr"
export PATH="$bundle/ompi/usr/bin:$bundle/bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export ELFIN_TRAIN_BIN="$bundle/bin/elfin-train" ELFIN_BENCH_DEVICE=cuda
# The oracle tests read shared/: inside the repository copy, else beside it.
repo=$(cd "$bundle/.." && pwd)
for candidate in "${ELFIN_SHARED_DIR:-}" "$repo/shared" "$repo/../shared"; do
  if [ -n "$candidate" ] && [ -d "$candidate/oracles" ]; then export ELFIN_SHARED_DIR=$candidate; break; fi
done
[ -n "${ELFIN_SHARED_DIR:-}" ] || echo "gpu-check: no shared/ folder with oracles found; the oracle GPU tests will fail (set ELFIN_SHARED_DIR)" >&2

note "== gpu-check $(date -u +%FT%TZ) on $(nvidia-smi -L 2>/dev/null | head -n1)"
"$bundle/bin/elfin-train" --version > "$out/logs/version.log" 2>&1
cat "$out/logs/version.log" >> "$summary"

failed=0
run_step() { # name, timeout seconds, command...
  local name=$1 limit=$2; shift 2
  local start=$SECONDS
  if timeout "$limit" "$@" > "$out/logs/$name.log" 2>&1; then
    note "PASS $name ($((SECONDS - start)) s)"
  else
    note "FAIL $name (exit $?, $((SECONDS - start)) s): see logs/$name.log"; failed=1
  fi
}

# First what the machine gives elfin: versions, devices, NVRTC per device, the
# fused loss kernel on random data, the all-reduce across the local GPUs.
run_step doctor 300 "$bundle/bin/elfin" doctor
grep -E '^(PASS|FAIL|SKIP)' "$out/logs/doctor.log" >> "$summary" 2>/dev/null || true

# Every #[ignore]d test is a GPU test by the project's convention.
for t in "$bundle"/tests/*; do
  n=$(basename "$t")
  if "$t" --list --ignored 2>/dev/null | grep -q ': test$'; then
    run_step "test-$n" 240 "$t" --ignored --test-threads=1
  fi
done
# A few training updates on CUDA, one run per autocast precision (with
# validation and beam search at the end), on synthetic data made here.
synth="$out/synth-caption"
"$bundle/bin/elfin-train" synth --task caption --train 100 --val 8 --image-size 64 --out "$synth" > "$out/logs/synth.log" 2>&1
for precision in fp16 bf16; do
  run_step "train-$precision" 300 "$bundle/bin/elfin-train" train --device=cuda "--$precision" \
    "--data=$synth/train.tsv,$synth/val.tsv" "--bpe-dir=$synth/bpe" "--save-dir=$out/run-$precision" \
    --selected-cols=0,4,2 --task=caption --code-dict-size=0 --arch=ofa_micro --patch-image-size=64 \
    --scale-attn --scale-fc --scale-heads --disable-entangle --batch-size=8 --max-update=20 --log-interval=5 \
    --lr=1e-3 --label-smoothing=0.1 --clip-norm=1.0 --eval-cider '--eval-args={"beam":5,"max_len_b":16}' \
    --best-checkpoint-metric=cider --maximize-best-checkpoint-metric
  tail -n 3 "$out/logs/train-$precision.log" >> "$summary" 2>/dev/null || true
done

# The GPU benchmarks (the others measure the CPU and are skipped here).
bench() { # name, seconds, command...
  local n=$1; shift
  [ -x "$bundle/benches/$n" ] || { note "SKIP bench-$n (not in the bundle)"; return; }
  run_step "bench-$n" "$@"
  grep -E '^(result|RESULT)' "$out/logs/bench-$n.log" >> "$summary" 2>/dev/null || true
}
bench el_loss 120 "$bundle/benches/el_loss" --gpu
bench model 180 "$bundle/benches/model" --gpu
bench allreduce 120 mpirun -np "$(nvidia-smi -L | wc -l)" "$bundle/benches/allreduce" --nccl
note "== done: $([ $failed = 0 ] && echo all passed || echo some failed)"
exit $failed
