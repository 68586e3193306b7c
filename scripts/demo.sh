#!/usr/bin/env bash
# The demo: sample images -> spark-submit preprocessing -> horovodrun -np 2 training on CPU -> test metrics.
# Usage: scripts/demo.sh [DEMO_DIR]   (make demo runs it with the virtual environment on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${1:-runs/demo}
NP=${BIGTRAIN_DEMO_NP:-2}
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$(command -v python)}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}
start=$(date +%s)

echo "== 1/3 generate sample images -> $DEMO_DIR/images"
rm -rf "$DEMO_DIR"
bigtrain generate-images --output "$DEMO_DIR/images"

echo "== 2/3 spark-submit jobs/preprocess_images.py -> $DEMO_DIR/dataset"
spark-submit --master "local[*]" jobs/preprocess_images.py \
  --input "$DEMO_DIR/images" --output "$DEMO_DIR/dataset" --image-size 32 --channels 3 --ranks "$NP"

echo "== 3/3 horovodrun -np $NP python jobs/train.py -> $DEMO_DIR/model"
horovodrun -np "$NP" -H "localhost:$NP" python jobs/train.py \
  --data "$DEMO_DIR/dataset" --output "$DEMO_DIR/model" --no-progress

python - "$DEMO_DIR" "$start" <<'PY'
import json, sys, time
demo, start = sys.argv[1], int(sys.argv[2])
m = json.load(open(f"{demo}/model/metrics.json"))
print()
print(f"demo finished in {time.time() - start:.0f}s: test accuracy {m['test_accuracy']:.4f} on {m['test_rows']} test "
      f"images, {m['world_size']} Horovod ranks, {len(m['history'])} epochs")
print(f"  raw images        {demo}/images")
print(f"  dataset           {demo}/dataset  (train/ validation/ test/ Petastorm, rejected/, metadata.json)")
print(f"  model + metrics   {demo}/model/checkpoint.pt, {demo}/model/metrics.json")
PY
