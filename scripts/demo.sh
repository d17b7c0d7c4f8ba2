#!/usr/bin/env bash
# `make demo`: the most complete thing elfin can run so far, on this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== elfin-train --version"
target/release/elfin-train --version
echo "== elfin --version"
target/release/elfin --version
