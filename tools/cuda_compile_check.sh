#!/usr/bin/env bash
# Compile-only check of every csrc/cuda/*.cu against the headers of the installed torch wheel
# (the CPU wheel works: it ships the c10/cuda and ATen/cuda headers and lacks only a generated
# macro header, which tools/cuda_shim provides). No GPU and no CUDA torch are needed; nothing is
# linked. ptxas prints registers / spills per kernel.
#
# Usage: tools/cuda_compile_check.sh [file.cu ...]     (default: every csrc/cuda/*.cu)
# Env:   PYTHON (default .venv/bin/python, else python3), CUDA_HOME (default /usr/local/cuda),
#        CUDA_ARCH (default 90), NVCC_EXTRA (extra flags, e.g. "-G" or "-lineinfo").
# Files are compiled one at a time (each nvcc needs ~1.5 GB of RAM). Exit status 1 if any fails.
set -u -o pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
NVCC="$CUDA_HOME/bin/nvcc"
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
ARCH="${CUDA_ARCH:-90}"

[[ -x "$NVCC" ]] || { echo "cuda_compile_check: no nvcc at $NVCC (set CUDA_HOME)" >&2; exit 2; }
TORCH_INC=$("$PYTHON" -c 'import torch.utils.cpp_extension as c; print(" ".join("-I" + p for p in c.include_paths()))') \
  || { echo "cuda_compile_check: cannot import torch with $PYTHON" >&2; exit 2; }

if [[ $# -gt 0 ]]; then FILES=("$@"); else FILES=(csrc/cuda/*.cu); fi
[[ -e "${FILES[0]}" ]] || { echo "cuda_compile_check: no .cu files found" >&2; exit 2; }

FLAGS=(
  $TORCH_INC -Itools/cuda_shim -Icsrc -Icsrc/include
  -std=c++20 --expt-relaxed-constexpr -O3 -Xcompiler -fPIC
  -DBPK_WITH_CUDA -DBPK_WITH_PYTHON
  -D__CUDA_NO_HALF_OPERATORS__ -D__CUDA_NO_HALF_CONVERSIONS__
  -D__CUDA_NO_BFLOAT16_CONVERSIONS__ -D__CUDA_NO_HALF2_OPERATORS__
  "-gencode=arch=compute_${ARCH},code=sm_${ARCH}" -Xptxas -v
  ${NVCC_EXTRA:-}
)

status=0
for f in "${FILES[@]}"; do
  echo "== $f"
  start=$SECONDS
  log=$(mktemp)
  if "$NVCC" "${FLAGS[@]}" -c "$f" -o /dev/null >"$log" 2>&1; then
    # One line per kernel from ptxas' report: registers, stack, spills, shared memory.
    awk '
      /Compiling entry function/ { match($0, /\047[^\047]+\047/); name = substr($0, RSTART + 1, RLENGTH - 2) }
      /bytes stack frame/ { stack = $1; st = $5; ld = $9 }
      /Used [0-9]+ registers/ {
        match($0, /Used [0-9]+ registers/); regs = substr($0, RSTART + 5, RLENGTH - 15)
        smem = 0; if (match($0, /[0-9]+ bytes smem/)) smem = substr($0, RSTART, RLENGTH - 11)
        printf "  regs %3d  stack %3d  spill st/ld %3d/%3d  smem %6d  %s\n", regs, stack, st, ld, smem, name
      }
      /error|warning/ { print }
    ' "$log" | { if command -v c++filt >/dev/null; then c++filt; else cat; fi; } \
      | sed -E 's/bpk::cuda::(\(anonymous namespace\)::)?//g; s/\(.*\)$//'
    spills=$(grep -Eo "[0-9]+ bytes spill (stores|loads)" "$log" | awk '{s += $1} END {print s + 0}')
    echo "-- OK in $((SECONDS - start)) s; total spill bytes: $spills"
  else
    cat "$log"
    echo "-- FAILED: $f"
    status=1
  fi
  rm -f "$log"
done
exit $status
