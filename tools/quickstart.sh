#!/usr/bin/env bash
# One command on a fresh Debian/Ubuntu machine: installs what bpkernels needs (the Fashion-MNIST
# package, a venv with torch, the extension) and trains a binary MLP on the real Fashion-MNIST.
# Arguments are passed to `bpkernels train` (default: 784-501-501-10, AMP, 20 epochs).
#   TORCH_SPEC  the torch to install when the venv has none (default torch==2.13.0; on a CUDA
#               machine install your CUDA torch into .venv first and it is kept)
#   VENV        the virtual environment (default .venv)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
if [[ ! -d /usr/share/datasets/fashion-mnist ]]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist
fi

VENV="${VENV:-.venv}"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -c 'import torch' 2>/dev/null || "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
"$PY" -m pip install -q setuptools wheel ninja numpy tqdm matplotlib pytest mpmath
"$PY" -m pip install -q -e . --no-build-isolation

if [[ $# -eq 0 ]]; then
  set -- --dataset fashion-mnist --hidden 501 501 --algo amp --epochs 20
fi
exec "$VENV/bin/bpkernels" train "$@"
