#!/usr/bin/env bash
# make gpu-check-data: everything scripts/gpu_check.sh needs on a GPU machine without network, Java or Spark, in one
# folder to carry there (default .cache/gpu_check, git-ignored; it must stay under 60 MiB):
#   data/images      ~1,500 grayscale 24 px images of 10 classes, through jobs/preprocess_images.py (Spark)
#   data/texts       the 6,000 sample reviews, through jobs/preprocess_sequences.py (Spark)
#   data/images-png  15,000 grayscale 24 px images stored as PNG (~12,000 train rows, ~7 MB): the throughput part's
#                    set, big enough for the loader and the training to reach their steady rates
#   wheels/          what a Python 3.12 + CUDA torch + pandas 3 host may lack: pyarrow 26.0.1 (repacked as .whl.xz
#                    to fit), pyzmq, petastorm 0.13.1, dill, diskcache, future, psutil, six; for Horovod: its 0.28.1
#                    sdist (built there by scripts/build_horovod.sh), cffi, pycparser, cloudpickle. (numpy, pandas,
#                    pyyaml, packaging, fsspec are on that host already: its torch comes with numpy 2, which
#                    pyarrow 26 runs on; carrying numpy would take 10 MiB of the limit.)
# Idempotent: what is there already is kept (delete a part to redo it). Needs the project venv on PATH (bigtrain,
# spark-submit), Java, and pip access to PyPI.
# Usage: scripts/gpu_check_data.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.cache/gpu_check}
LIMIT_MIB=60
RANKS=8   # row groups per split: a multiple of 8, so up to 8 GPUs each read whole row groups
# spark-submit's JVM names local files in the locale it starts in: UTF-8 whatever the caller's (cron, minimal images)
case "${LC_ALL:-${LC_CTYPE:-${LANG:-}}}" in *[Uu][Tt][Ff]-8*|*[Uu][Tt][Ff]8*) ;; *) export LC_ALL=C.UTF-8 ;; esac
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$(command -v python)}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}
mkdir -p "$DIR/data" "$DIR/wheels"
staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

have_dataset() { compgen -G "$1/snapshots/*/metadata.json" >/dev/null; }

# dataset NAME GENERATE_CMD JOB JOB_FLAGS...: bigtrain GENERATE_CMD into staging, then the job into data/NAME, unless
# data/NAME holds a committed snapshot already.
dataset() {
  local name=$1 generate=$2 job=$3; shift 3
  if have_dataset "$DIR/data/$name"; then
    echo "gpu-check-data: $DIR/data/$name is there (delete it to rebuild)"
    return
  fi
  rm -rf "$DIR/data/$name"
  echo "gpu-check-data: $name: bigtrain $generate, then spark-submit jobs/$job"
  bigtrain $generate --output "$staging/$name"
  spark-submit --master "local[*]" "jobs/$job" --quiet --input "$staging/$name" --output "$DIR/data/$name" "$@"
}

dataset images "generate-images --per-class 150 --bad-files 0" preprocess_images.py \
  --image-size 24 --channels 1 --ranks "$RANKS"
dataset texts "generate-texts --bad-lines 0" preprocess_sequences.py \
  --text-field text --label-field label --max-length 64 --ranks "$RANKS"
# The throughput part's set: 1,500 per class, 80 % of them train rows; 16 row groups per split, so that loader
# workers up to 16 each get whole row groups.
dataset images-png "generate-images --per-class 1500 --bad-files 0" preprocess_images.py \
  --image-size 24 --channels 1 --codec png --ranks 16

# Wheels for CPython 3.12 on x86_64 Linux, what the GPU hosts run (pure-Python wheels match them too).
BINARY=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
        --platform manylinux_2_26_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
fetch() {  # fetch GLOB wheel|sdist SPEC [xz]: download SPEC unless a file matching GLOB is in wheels/
  local glob=$1 kind=$2 spec=$3 packed=${4:-}
  if compgen -G "$DIR/wheels/$glob" >/dev/null; then return; fi
  rm -f "$DIR/wheels/${spec%%[=<>]*}"-*  # another version from an earlier pin: pip refuses two of one package
  echo "gpu-check-data: downloading $spec"
  local dl="$staging/dl-${spec%%[=<>]*}"
  case "$kind" in
    wheel) python -m pip download -q --no-deps "${BINARY[@]}" -d "$dl" "$spec" ;;
    sdist) python -m pip download -q --no-deps --no-binary :all: -d "$dl" "$spec" ;;
  esac
  for file in "$dl"/*; do
    if [[ -n $packed ]]; then
      echo "gpu-check-data: repacking $(basename "$file") as .whl.xz (a minute or two)"
      python scripts/gpu_check_wheels.py pack "$file" "$DIR/wheels" >/dev/null
    else
      mv "$file" "$DIR/wheels/"
    fi
  done
}
fetch 'pyarrow-26.0.1-*.whl.xz' wheel pyarrow==26.0.1 xz
# numpy is not carried (see above); a folder made before still holds its wheel: it must not be carried along.
if compgen -G "$DIR/wheels/numpy-*" >/dev/null; then
  echo "gpu-check-data: removing $(cd "$DIR/wheels" && echo numpy-*): numpy is no longer carried"
  rm -f "$DIR"/wheels/numpy-*
fi
# The versions of requirements/runtime.txt (the stack the tests pass on); cffi and pycparser (build Horovod only):
# the venv's.
fetch 'pyzmq-26.2.0-*.whl' wheel pyzmq==26.2.0
fetch 'psutil-6.1.1-*.whl' wheel psutil==6.1.1
fetch 'cffi-2.1.1-*.whl' wheel cffi==2.1.1
fetch 'petastorm-0.13.1-*.whl' wheel petastorm==0.13.1
fetch 'dill-0.4.0-*.whl' wheel dill==0.4.0
fetch 'diskcache-5.6.3-*.whl' wheel diskcache==5.6.3
fetch 'future-1.0.0-*.whl' wheel future==1.0.0
fetch 'six-1.17.0-*.whl' wheel six==1.17.0
fetch 'pycparser-3.12-*.whl' wheel pycparser==3.12
fetch 'cloudpickle-3.1.1-*.whl' wheel cloudpickle==3.1.1
fetch 'horovod-0.28.1.tar.gz' sdist horovod==0.28.1

echo "gpu-check-data: in $DIR:"
du -sh "$DIR/data/images" "$DIR/data/texts" "$DIR/data/images-png" "$DIR/wheels" | sed 's/^/  /'
total=$(du -sb "$DIR" | cut -f1)
mib=$(( (total + 1048575) / 1048576 ))
echo "gpu-check-data: total $total bytes (${mib} MiB; the limit is $LIMIT_MIB MiB)"
if (( total >= LIMIT_MIB * 1048576 )); then
  echo "error: $DIR holds $total bytes, over the $LIMIT_MIB MiB that can be carried to the GPU machine" >&2
  exit 1
fi
echo "gpu-check-data: carry $DIR to the GPU machine and run scripts/gpu_check.sh there (see --help)"
