#!/usr/bin/env bash
# Build Horovod 0.28.1 for PyTorch into a cached wheel: Gloo CPU operations always, and NCCL GPU operations when
# PYTHON has a CUDA build of torch, nvcc is found and GPUs are visible or named in HOROVOD_BUILD_CUDA_CC_LIST
# (scripts/horovod_build_env.py decides and sets the build up).
#
# Usage: scripts/build_horovod.sh PYTHON WHEEL_DIR
#   stdout: exactly one line, the absolute path of the wheel to install (cached or just built). Nothing is installed.
#   stderr: progress; on failure a last line "error: ..." and a non-zero exit status.
# Environment (all optional):
#   BIGTRAIN_HOROVOD_GPU=auto|0|1  auto (default): GPU build when possible; 1: GPU build or fail saying why; 0: CPU.
#   HOROVOD_SDIST=/path/horovod-0.28.1.tar.gz  a carried source release (GPU nodes are often offline);
#                                  without it the source is downloaded with pip.
#   HOROVOD_BUILD_CUDA_CC_LIST=90  GPU architectures to build for; default: those of the GPUs torch sees.
#   HOROVOD_NCCL_HOME or NCCL_HOME  an NCCL install (include/nccl.h, lib/libnccl.so) instead of the NCCL of
#                                  torch's nvidia-nccl wheel; /usr/include/nccl.h is the last resort.
# Cache: WHEEL_DIR/horovod-0.28.1/VARIANT/horovod-0.28.1-cpXY-*.whl (GPU: and the nccl/ links it was built with,
#   in its RUNPATH; after a failed build: build-failed.log), VARIANT
#   e.g. cpu-torch2.13.0+cpu or cuda13.0-sm90-torch2.14.1+cu130: a wheel is reused only for the same build kind,
#   GPU architectures, torch and Python.
#
# Why a local build: horovod ships only an sdist, and 0.28.1 (its last release, 2023) compiles its PyTorch
# extension with -std=c++14 while torch>=2.1 headers require C++17. Upstream fixed this after the release
# ("Compile using C++17 when using PyTorch 2.1"); we apply the same change to the two CMakeLists.txt files
# (C++20 for the torch extension when torch's headers demand it).
# The wheel is cached in WHEEL_DIR (git-ignored) so a second setup skips the compile (2-3 minutes on 2 cores).
set -euo pipefail
PYTHON=${1:?usage: build_horovod.sh PYTHON WHEEL_DIR}
WHEEL_DIR=${2:?usage: build_horovod.sh PYTHON WHEEL_DIR}
VERSION=0.28.1
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# Callers read the wheel's path from stdout: keep it for that line alone, everything else goes to stderr.
exec 3>&1 1>&2
log() { echo "horovod $VERSION: $*"; }
die() { echo "error: $*"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# NAME=VALUE lines: the variant, then the build's environment. The helper prints its own error line on failure.
plan=$("$PYTHON" "$HERE/horovod_build_env.py" "$work") || exit 1
while IFS= read -r line; do export "${line%%=*}=${line#*=}"; done <<< "$plan"
variant=$BIGTRAIN_HOROVOD_VARIANT

mkdir -p "$WHEEL_DIR"
cache="$(cd "$WHEEL_DIR" && pwd)/horovod-$VERSION/$variant"
shopt -s nullglob
cached=("$cache"/horovod-"$VERSION"-"$BIGTRAIN_HOROVOD_PYTAG"-*.whl)
shopt -u nullglob
if (( ${#cached[@]} )); then
  log "using the cached wheel for $variant"
  echo "${cached[0]}" >&3
  exit 0
fi

for tool in g++ make; do
  command -v "$tool" >/dev/null || die "building horovod needs '$tool' (Debian: apt-get install build-essential)"
done
if ! command -v cmake >/dev/null; then
  log "cmake not found: installing it from PyPI into the virtual environment"
  "$PYTHON" -m pip install -q 'cmake<4' || die "cmake not found and pip could not install it: install cmake >= 3.13"
  export PATH="$(dirname "$PYTHON"):$PATH"
fi
# Horovod's setup.py lists cffi in setup_requires and would try to download it in the middle of the build. Fetch it
# for the build only (a folder on PYTHONPATH), so that PYTHON's environment is left as it was.
if [[ $BIGTRAIN_HOROVOD_NEEDS_CFFI == 1 ]]; then
  log "cffi is not importable (horovod's setup needs it): fetching it from PyPI for the build"
  "$PYTHON" -m pip install -q --retries 1 --timeout 20 --target "$work/build-deps" cffi \
    || die "cffi is not importable by $PYTHON and pip could not fetch it (offline?): carry a cffi wheel (pip download cffi pycparser) and pip install it first"
  export PYTHONPATH="$work/build-deps${PYTHONPATH:+:$PYTHONPATH}"
fi

if [[ -n ${HOROVOD_SDIST:-} ]]; then
  [[ -f $HOROVOD_SDIST ]] || die "HOROVOD_SDIST=$HOROVOD_SDIST is not a file: point it at horovod-$VERSION.tar.gz"
  log "using the source release $HOROVOD_SDIST"
  sdist=$HOROVOD_SDIST
else
  log "downloading the source release (offline? set HOROVOD_SDIST=/path/horovod-$VERSION.tar.gz)"
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: -d "$work" "horovod==$VERSION" \
    || die "could not download horovod==$VERSION: set HOROVOD_SDIST to a carried horovod-$VERSION.tar.gz"
  sdist="$work/horovod-$VERSION.tar.gz"
fi
tar -xzf "$sdist" -C "$work" || die "cannot unpack $sdist (HOROVOD_SDIST must be horovod-$VERSION.tar.gz)"
src="$work/horovod-$VERSION"
[[ -f $src/setup.py ]] || die "$sdist has no horovod-$VERSION/setup.py: it is not the horovod $VERSION source release"
# Horovod itself is compiled as C++17; its torch extension with what torch's headers demand (17; 20 from torch 2.14,
# whose c10 headers use std::strong_ordering).
for f in "$src/CMakeLists.txt" "$src/horovod/torch/CMakeLists.txt"; do
  grep -q 'set(CMAKE_CXX_STANDARD 14)' "$f" || die "expected 'set(CMAKE_CXX_STANDARD 14)' in $f"
done
sed -i 's/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD 17)/' "$src/CMakeLists.txt"
sed -i "s/set(CMAKE_CXX_STANDARD 14)/set(CMAKE_CXX_STANDARD $BIGTRAIN_HOROVOD_TORCH_CXX_STANDARD)/" \
  "$src/horovod/torch/CMakeLists.txt"
# A CPU build against a CUDA build of torch (PyPI's only torch for Python >= 3.12 on Linux is one): Horovod's
# FindPytorch calls torch CUDA-capable as soon as torch finds any CUDA_HOME (an nvcc on PATH is enough), and then
# compiles the torch extension for CUDA, asking CMake for a toolkit at that guess (/usr/local for /usr/local/bin/nvcc:
# "Could NOT find CUDAToolkit"). A CPU build has no CUDA in it: build the extension as for a CPU torch.
if [[ -z ${HOROVOD_GPU_OPERATIONS:-} ]]; then
  find_pytorch="$src/cmake/Modules/FindPytorch.cmake"
  cuda_test='(torch.version.cuda is not None) and (CUDA_HOME is not None)'
  grep -qF "$cuda_test" "$find_pytorch" || die "expected '$cuda_test' in $find_pytorch"
  sed -i "s/$cuda_test/False/" "$find_pytorch"  # in sed's basic regex, ( ) are literal
fi

mkdir -p "$cache"
# The library keeps the NCCL folder in its RUNPATH: keep it beside the wheel, not in a temporary folder that anyone
# could recreate later with another libnccl.so.2 in it.
if [[ ${HOROVOD_NCCL_HOME:-} == "$work/nccl" ]]; then
  rm -rf "$cache/nccl"
  mv "$work/nccl" "$cache/nccl"
  export HOROVOD_NCCL_HOME="$cache/nccl"
fi
if [[ -n ${HOROVOD_GPU_OPERATIONS:-} ]]; then
  log "compiling for $variant (PyTorch; Gloo CPU and NCCL GPU operations; CUDA $HOROVOD_CUDA_HOME," \
      "NCCL $HOROVOD_NCCL_HOME, architectures $HOROVOD_BUILD_CUDA_CC_LIST); this takes a few minutes"
else
  log "compiling for $variant (PyTorch + Gloo, no MPI/TensorFlow/MXNet); this takes a few minutes"
fi
export MAKEFLAGS="-j$(nproc)"
"$PYTHON" -m pip wheel -q --no-build-isolation --no-deps -w "$work/dist" "$src" > "$work/build.log" 2>&1 || {
  cp "$work/build.log" "$cache/build-failed.log"
  # pip's tail is a Python traceback: show the first compiler or CMake errors above it.
  grep -E -m 10 ': (fatal )?error:|#error|CMake Error' "$work/build.log" | cut -c1-400 || true
  tail -40 "$work/build.log"
  die "horovod build failed (log above; whole log in $cache/build-failed.log)"; }
rm -f "$cache/build-failed.log"
built=("$work"/dist/horovod-"$VERSION"-*.whl)
[[ -f ${built[0]} ]] || die "pip wheel succeeded but left no horovod-$VERSION wheel in $work/dist"
# Copy under a temporary name first: an interrupted copy must never look like a cached wheel.
wheel="$cache/$(basename "${built[0]}")"
cp "${built[0]}" "$wheel.partial"
mv "$wheel.partial" "$wheel"
log "wheel cached in $cache ($(du -h "$wheel" | cut -f1))"
echo "$wheel" >&3
