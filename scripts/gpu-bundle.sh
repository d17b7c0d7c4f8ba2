#!/usr/bin/env bash
# `make gpu-bundle`: packs what scripts/gpu-check.sh needs on a GPU machine that
# has PyTorch 2.11 (CUDA 13) but no cargo, no network and no MPI: the release
# binaries, the test and bench executables, and Open MPI (libraries, plugins,
# help files, mpirun) relocated under one folder (OPAL_PREFIX).
#
#   scripts/gpu-bundle.sh [OUT_DIR]      (default: gpu-bundle/)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-bundle}
rm -rf "$out"; mkdir -p "$out/bin" "$out/tests" "$out/benches" "$out/lib" "$out/ompi"

cp target/release/elfin target/release/elfin-train "$out/bin/"

# Test and bench executables, named without cargo's hash.
cargo test --release --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["target"]["name"], m["executable"])' \
  | while read -r name exe; do
      # Only the test binaries with #[ignore]d (GPU) tests: the CPU tests run here.
      if "$exe" --list --ignored 2>/dev/null | grep -q ': test$'; then cp "$exe" "$out/tests/$name"; fi
    done
cargo bench --workspace --no-run --message-format=json 2>/dev/null \
  | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "bench" in m["target"]["kind"]:
        print(m["target"]["name"], m["executable"])' \
  | while read -r name exe; do
      case "$name" in el_loss|model|allreduce|step) cp "$exe" "$out/benches/$name" ;; esac  # the GPU benchmarks
    done

# Open MPI, mirrored under ompi/usr so that OPAL_PREFIX=ompi/usr relocates it.
ompi_lib=/usr/lib/x86_64-linux-gnu/openmpi
mkdir -p "$out/ompi/usr/lib/x86_64-linux-gnu" "$out/ompi/usr/share" "$out/ompi/usr/bin"
cp -a "$ompi_lib" "$out/ompi/usr/lib/x86_64-linux-gnu/"
cp -a /usr/share/openmpi "$out/ompi/usr/share/"
for b in orterun orted; do cp -L "/usr/bin/$b" "$out/ompi/usr/bin/"; done
ln -sf orterun "$out/ompi/usr/bin/mpirun"

# Every shared library these need that is neither glibc, the C++ runtime,
# libtorch/CUDA (the GPU machine has its own) nor already bundled.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|libpthread\.|librt\.|libgcc_s|libstdc\+\+|libtorch|libc10|libcuda|libcudart|libcupti|libnccl|libnvrtc|libgomp|libcublas|libcudnn)'
{ find "$out/bin" "$out/tests" "$out/benches" "$out/ompi" -type f -perm -u+x; find "$out/ompi" -name '*.so*' -type f; } \
  | xargs -r ldd 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u \
  | while read -r name path; do
      # The GPU machine's own torch wheel brings libtorch and the CUDA libraries.
      [[ $name =~ $skip || $path == */site-packages/* ]] && continue
      [ -e "$out/lib/$name" ] || cp -L "$path" "$out/lib/$name"
    done
# Debug line tables would make the bundle too large to carry.
strip --strip-debug "$out"/bin/* "$out"/tests/* "$out"/benches/* 2>/dev/null || true
cp scripts/gpu-check.sh "$out/"
echo "gpu-bundle: $(du -sh "$out" | cut -f1) in $out; run: bash $out/gpu-check.sh OUT_DIR"
