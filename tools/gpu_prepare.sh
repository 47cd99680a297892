#!/usr/bin/env bash
# Fills .gpu_carry/ (git-ignored) with what tools/gpu_check.sh needs on a GPU machine that has
# no network: the four Fashion-MNIST IDX files, the commit being checked, and wheels of the
# optional Python modules (ninja, pytest-xdist, pytest-timeout, mpmath, hypothesis and their
# needs) for Python 3.12 / manylinux x86-64, installed there only where the image lacks them.
# Run it in the checkout whose working tree the `run` tool sends, then name .gpu_carry in carry.
#
# Usage:  bash tools/gpu_prepare.sh [--no-wheels]
# Env:    FMNIST_DIR (default /usr/share/datasets/fashion-mnist, Debian's dataset-fashion-mnist),
#         PY_VERSION (default 3.12: the GPU machine's python3).
set -u -o pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
CARRY=.gpu_carry
SRC="${FMNIST_DIR:-/usr/share/datasets/fashion-mnist}"
PYV="${PY_VERSION:-3.12}"
mkdir -p "$CARRY/data" "$CARRY/whl"

n=0
for stem in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
  if [[ -f "$SRC/$stem.gz" ]]; then
    cp -u "$SRC/$stem.gz" "$CARRY/data/" && n=$((n + 1))
  elif [[ -f "$SRC/$stem" ]]; then
    gzip -c "$SRC/$stem" >"$CARRY/data/$stem.gz" && n=$((n + 1))
  fi
done
if [[ $n -ne 4 ]]; then
  echo "gpu_prepare: found $n of 4 Fashion-MNIST files in $SRC (apt-get install dataset-fashion-mnist, or set FMNIST_DIR)" >&2
  exit 1
fi
echo "gpu_prepare: Fashion-MNIST -> $CARRY/data ($(du -sh "$CARRY/data" | cut -f1))"

# The machine gets the working tree without .git: the commit travels as a file.
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then commit="$commit-dirty"; fi
echo "$commit" >"$CARRY/commit.txt"
echo "gpu_prepare: commit $commit -> $CARRY/commit.txt"

if [[ "${1:-}" != "--no-wheels" ]]; then
  # One pinned version of each (two versions of one package stop the install there).
  WHEELS=(ninja==1.13.2 pytest-xdist==3.8.0 execnet==2.1.2 pytest-timeout==2.4.0 mpmath==1.3.0
          hypothesis==6.170.15 attrs==26.1.0 sortedcontainers==2.4.0)
  PIP=(python3 -m pip download --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp
       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
       --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64
       -q -d "$CARRY/whl")
  if "${PIP[@]}" "${WHEELS[@]}"; then
    echo "gpu_prepare: wheels -> $CARRY/whl: $(ls "$CARRY/whl" | tr '\n' ' ')"
  else
    echo "gpu_prepare: WARNING: wheel download failed; the check still runs where the image has these modules" >&2
  fi
fi
echo "gpu_prepare: $CARRY holds $(du -sh "$CARRY" | cut -f1) (the tree that travels must stay under 64 MiB)"
