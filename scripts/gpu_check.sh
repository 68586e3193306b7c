#!/usr/bin/env bash
# The GPU check (make gpu-check): train the CNN and the LSTM with --backend single, torchrun and horovodrun, print
# a table and exit non-zero when a run fails or loses accuracy; then measure how fast the loader feeds the GPU (the
# throughput part; --no-throughput skips it, --only-throughput runs it alone). Meant for a GPU machine without
# network, Java or Spark whose python3 has a CUDA torch (and numpy): it gets what it lacks from the folder
# `make gpu-check-data` wrote elsewhere and that was carried along (.cache/gpu_check). Runs on CPU hosts too (the
# GPU rows are skipped, it says so).
#
# Usage: scripts/gpu_check.sh [--out DIR] [--epochs N] [--tolerance X] [...]   (all options: --help)
# This script only sets the interpreter up; scripts/gpu_check.py runs the check. Environment:
#   GPU_CHECK_PYTHON  the interpreter (default python3: the venv's when it is first on PATH, as make puts it)
#   GPU_CHECK_CARRY   the carried folder (default .cache/gpu_check)
#   BIGTRAIN_SITE     where the carried wheels (and a built Horovod) are installed (default /tmp/bigtrain-site)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${GPU_CHECK_PYTHON:-python3}
CARRY=${GPU_CHECK_CARRY:-.cache/gpu_check}
export BIGTRAIN_SITE=${BIGTRAIN_SITE:-/tmp/bigtrain-site}

for arg in "$@"; do
  if [[ $arg == -h || $arg == --help ]]; then
    sed -n '2,13s/^# \{0,1\}//p' "$0"
    echo "Wheels: when petastorm, pyarrow, numpy and zmq do not all import, CARRY/wheels/*.whl (and *.whl.xz, unpacked"
    echo "into /tmp/bigtrain-wheels) are installed with pip --no-index --no-deps --target \$BIGTRAIN_SITE, which goes"
    echo "first on PYTHONPATH (then the repository root) and \$BIGTRAIN_SITE/bin first on PATH. numpy is not carried:"
    echo "the interpreter's own is used (a CUDA torch comes with numpy 2, which the carried pyarrow 26 runs on)."
    echo
    exec "$PY" scripts/gpu_check.py --help
  fi
done

# Petastorm 0.13.1 imports only through bigtrain's compatibility layer on pyarrow >= 15 (compat/petastorm.py).
STACK='import compat.petastorm as c; c.install(); import numpy, pyarrow, petastorm.reader, zmq'
stack_imports() { "$PY" -c "$STACK" >/dev/null 2>&1; }
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
if stack_imports; then
  echo "gpu-check: numpy, pyarrow and petastorm import already: no wheels installed" >&2
else
  export PYTHONPATH="$BIGTRAIN_SITE:$PYTHONPATH" PATH="$BIGTRAIN_SITE/bin:$PATH"
  if stack_imports; then
    echo "gpu-check: using the wheels installed before in $BIGTRAIN_SITE" >&2
  elif compgen -G "$CARRY/wheels/*.whl*" >/dev/null; then
    echo "gpu-check: installing $CARRY/wheels into $BIGTRAIN_SITE (no index, no dependencies)" >&2
    "$PY" scripts/gpu_check_wheels.py unpack "$CARRY/wheels" /tmp/bigtrain-wheels >/dev/null
    shopt -s nullglob
    wheels=("$CARRY"/wheels/*.whl /tmp/bigtrain-wheels/*.whl)
    shopt -u nullglob
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$BIGTRAIN_SITE" "${wheels[@]}"
    "$PY" -c 'import numpy' 2>/dev/null || { echo "error: $PY cannot import numpy, and $CARRY/wheels does not" \
      "carry it (a CUDA torch's host has numpy 2): install numpy >= 2 for $PY" >&2; exit 2; }
    stack_imports || { echo "error: with $CARRY/wheels installed in $BIGTRAIN_SITE, $PY still cannot import" \
      "numpy, pyarrow, petastorm.reader and zmq: $("$PY" -c "$STACK" 2>&1 | tail -1)" >&2; exit 2; }
  else
    echo "error: $PY cannot import numpy, pyarrow, petastorm.reader and zmq together, and $CARRY/wheels holds no" \
      "wheels: run \`make gpu-check-data\` on a machine with network and carry $CARRY here" >&2
    exit 2
  fi
fi
exec "$PY" scripts/gpu_check.py --carry "$CARRY" "$@"
