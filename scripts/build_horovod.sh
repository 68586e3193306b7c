#!/usr/bin/env bash
# Build Horovod 0.28.1 (PyTorch + Gloo, CPU operations) into a cached wheel.
#
# Usage: scripts/build_horovod.sh PYTHON WHEEL_DIR
#
# Why a local build: horovod ships only an sdist, and 0.28.1 (its last release, 2023) compiles its PyTorch
# extension with -std=c++14 while torch>=2.1 headers require C++17. Upstream fixed this after the release
# ("Compile using C++17 when using PyTorch 2.1"); we apply the same change to the two CMakeLists.txt files.
# The wheel is cached in WHEEL_DIR (git-ignored) so a second setup skips the 2-3 minute compile.
set -euo pipefail
PYTHON=${1:?usage: build_horovod.sh PYTHON WHEEL_DIR}
WHEEL_DIR=${2:?usage: build_horovod.sh PYTHON WHEEL_DIR}
VERSION=0.28.1

mkdir -p "$WHEEL_DIR"
if ls "$WHEEL_DIR"/horovod-"$VERSION"-*.whl >/dev/null 2>&1; then
  echo "horovod $VERSION: using cached wheel in $WHEEL_DIR"
  exit 0
fi
for tool in g++ make; do
  command -v "$tool" >/dev/null || { echo "error: building horovod needs '$tool' (Debian: apt-get install build-essential)" >&2; exit 1; }
done
if ! command -v cmake >/dev/null; then
  echo "cmake not found: installing it from PyPI into the virtual environment"
  "$PYTHON" -m pip install -q 'cmake<4'
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "horovod $VERSION: downloading the source release"
"$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$work" "horovod==$VERSION"
tar -xzf "$work"/horovod-"$VERSION".tar.gz -C "$work"
src="$work/horovod-$VERSION"
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
  grep -q 'set(CMAKE_CXX_STANDARD 14)' "$f" || { echo "error: expected 'set(CMAKE_CXX_STANDARD 14)' in $f" >&2; exit 1; }
  sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$f"
done

echo "horovod $VERSION: compiling (PyTorch + Gloo, no MPI/TensorFlow/MXNet); this takes a few minutes"
export HOROVOD_WITH_PYTORCH=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 HOROVOD_WITHOUT_TENSORFLOW=1 \
       HOROVOD_WITHOUT_MXNET=1 HOROVOD_CPU_OPERATIONS=GLOO
export MAKEFLAGS="-j$(nproc)"
"$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" "$src" > "$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2; echo "error: horovod build failed (log above)" >&2; exit 1; }
cp "$work"/dist/horovod-*.whl "$WHEEL_DIR"/
echo "horovod $VERSION: wheel cached in $WHEEL_DIR"
