#!/usr/bin/env bash
# The GPU check: builds the extension against the torch found on the machine, runs every CUDA
# test, compute-sanitizer (memcheck, racecheck, synccheck), the ceilings and kernel benchmarks,
# one short training per method on full Fashion-MNIST, and ncu on the fused BPI kernel; each
# stage with its own time limit, all of it inside --deadline (450 s by default).
#
# Usage:  bash tools/gpu_check.sh OUTDIR [--pack DIR] [--expect-gpu] [--only a,b] [--skip a,b]
#                                        [--deadline S] [--epochs N] [--clean-build]
# Without a GPU it is a rehearsal: GPU stages are skipped or run as CPU stand-ins, exit 0.
# Prepare the data (and optional wheels) first with tools/gpu_prepare.sh; see docs/gpu_check.md.
# Env: PYTHON (default python3: on the GPU machine the one that holds torch).
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
if [[ $# -lt 1 || "$1" == -* ]]; then
  echo "usage: bash tools/gpu_check.sh OUTDIR [options of tools/gpu_check.py]" >&2
  exit 2
fi
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
exec "$PY" tools/gpu_check.py --python "$PY" "$@"
