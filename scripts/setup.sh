#!/usr/bin/env bash
# Installs what elfin needs on a Debian 12 machine, and checks versions.
# Idempotent: with everything present it changes nothing and takes seconds.
#
#   ELFIN_ENV   the Python virtual environment holding torch (default:
#               /opt/elfin/venv when /opt is writable, else ~/.cache/elfin/venv)
set -euo pipefail

TORCH_VERSION=2.11.0
APT_PACKAGES=(libopenmpi-dev openmpi-bin libclang-dev pkg-config chromium gcc g++ make openjdk-17-jre-headless iproute2 slurm-wlm munge)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

default_env() {
  if [ -w /opt ] || { [ ! -e /opt/elfin ] && [ "$(id -u)" = 0 ]; }; then
    echo /opt/elfin/venv
  else
    echo "$HOME/.cache/elfin/venv"
  fi
}
ELFIN_ENV=${ELFIN_ENV:-$(default_env)}

# --- Debian packages ---------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing Debian packages (${missing[*]}) and no apt-get; install them by hand"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  say "installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq || die "apt-get update failed; check the network to the Debian mirror and run 'make setup' again"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed; run 'make setup' again, or install them by hand"
fi
command -v mpirun >/dev/null || die "mpirun not found after installing openmpi-bin"

# --- Rust --------------------------------------------------------------------
command -v cargo >/dev/null || die "cargo not found: install Rust (rustup) and run 'make setup' again"

# --- Python environment with torch ---------------------------------------------
have_torch() {
  [ -x "$ELFIN_ENV/bin/python" ] && "$ELFIN_ENV/bin/python" - "$TORCH_VERSION" <<'PY' 2>/dev/null
import sys, importlib.metadata as md
v = md.version("torch").split("+")[0]
sys.exit(0 if v == sys.argv[1] and md.version("numpy") and md.version("safetensors") else 1)
PY
}
if ! have_torch; then
  PY=${PYTHON:-python3}
  command -v "$PY" >/dev/null || die "python3 not found: install python3 and python3-venv"
  if [ ! -x "$ELFIN_ENV/bin/python" ]; then
    say "creating the Python environment $ELFIN_ENV"
    mkdir -p "$(dirname "$ELFIN_ENV")"
    "$PY" -m venv "$ELFIN_ENV" || die "could not create $ELFIN_ENV (on Debian: apt-get install python3-venv), then run 'make setup' again"
  fi
  say "installing torch==$TORCH_VERSION, numpy and safetensors into $ELFIN_ENV (about 4.6 GB, a few minutes)"
  "$ELFIN_ENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" numpy safetensors \
    || die "pip install torch==$TORCH_VERSION failed (network or disk space?); run 'make setup' again: pip resumes where it stopped"
  have_torch || die "torch $TORCH_VERSION is still not importable from $ELFIN_ENV; remove that folder and run 'make setup' again"
fi

# --- COCO caption metrics: pycocoevalcap (its PTB tokenizer and METEOR run on Java) ---
PYCOCOEVALCAP_VERSION=1.2
if ! "$ELFIN_ENV/bin/python" -c "import importlib.metadata as md, sys; sys.exit(md.version('pycocoevalcap') != '$PYCOCOEVALCAP_VERSION')" 2>/dev/null; then
  say "installing pycocoevalcap==$PYCOCOEVALCAP_VERSION into $ELFIN_ENV (about 100 MB)"
  "$ELFIN_ENV/bin/pip" install -q --disable-pip-version-check "pycocoevalcap==$PYCOCOEVALCAP_VERSION" \
    || die "pip install pycocoevalcap==$PYCOCOEVALCAP_VERSION failed (network?); run 'make setup' again"
fi
command -v java >/dev/null || die "java not found after installing openjdk-17-jre-headless"

say "ok: $(mpirun --version 2>/dev/null | head -n1); $(cargo --version); torch $TORCH_VERSION in $ELFIN_ENV"
