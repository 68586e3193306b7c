#!/usr/bin/env bash
# The demo: sample data -> spark-submit preprocessing -> horovodrun -np 2 training on CPU -> test metrics,
# for images (CNN) and for text (an LSTM: the sample reviews' labels depend on word order, which the default
# sequence model, fasttext, a bag of words and word pairs, cannot see; the closing line shows it beside the
# bag-of-words baseline).
# Usage: scripts/demo.sh [DEMO_DIR] [all|images|texts]   (make demo runs it with the virtual environment on PATH)
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO_DIR=${1:-runs/demo}
WHAT=${2:-all}
NP=${BIGTRAIN_DEMO_NP:-2}
# spark-submit's JVM names local files in the locale it starts in: UTF-8 whatever the caller's (cron, minimal images)
case "${LC_ALL:-${LC_CTYPE:-${LANG:-}}}" in *[Uu][Tt][Ff]-8*|*[Uu][Tt][Ff]8*) ;; *) export LC_ALL=C.UTF-8 ;; esac
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$(command -v python)}
export PYSPARK_DRIVER_PYTHON=${PYSPARK_DRIVER_PYTHON:-$PYSPARK_PYTHON}
start=$(date +%s)

run_images() {
  local dir="$DEMO_DIR/images"
  rm -rf "$dir"
  echo "== images 1/3: bigtrain generate-images -> $dir/raw"
  bigtrain generate-images --output "$dir/raw"
  echo "== images 2/3: spark-submit jobs/preprocess_images.py -> $dir/dataset"
  spark-submit --master "local[*]" jobs/preprocess_images.py \
    --input "$dir/raw" --output "$dir/dataset" --image-size 32 --channels 3 --ranks "$NP"
  echo "== images 3/3: horovodrun -np $NP python jobs/train.py -> $dir/model"
  horovodrun -np "$NP" -H "localhost:$NP" python jobs/train.py \
    --data "$dir/dataset" --output "$dir/model" --no-progress
}

run_texts() {
  local dir="$DEMO_DIR/texts"
  rm -rf "$dir"
  echo "== texts 1/3: bigtrain generate-texts -> $dir/raw"
  bigtrain generate-texts --output "$dir/raw"
  echo "== texts 2/3: spark-submit jobs/preprocess_sequences.py -> $dir/dataset"
  spark-submit --master "local[*]" jobs/preprocess_sequences.py \
    --input "$dir/raw" --output "$dir/dataset" --text-field text --label-field label --max-length 64 --ranks "$NP"
  echo "== texts 3/3: horovodrun -np $NP python jobs/train.py --model lstm -> $dir/model"
  horovodrun -np "$NP" -H "localhost:$NP" python jobs/train.py \
    --data "$dir/dataset" --output "$dir/model" --no-progress --model lstm
}

case "$WHAT" in
  all) run_images; run_texts ;;
  images) run_images ;;
  texts) run_texts ;;
  *) echo "error: unknown demo '$WHAT' (all, images or texts)" >&2; exit 2 ;;
esac

python - "$DEMO_DIR" "$start" "$WHAT" <<'PY'
import json, os, sys, time
demo, start, what = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"\ndemo finished in {time.time() - start:.0f}s")
for kind in ("images", "texts"):
    path = f"{demo}/{kind}/model/metrics.json"
    if what not in ("all", kind) or not os.path.exists(path):
        continue
    m = json.load(open(path))
    words = m["baselines"]["bag_of_words"]
    print(f"  {kind:<6} {m['model']:<8}: test accuracy {m['test_accuracy']:.4f} on {m['test_rows']} test rows "
          f"(majority class {m['baselines']['majority_class']['accuracy']:.4f}"
          + (f", bag-of-words {words['accuracy']:.4f}" if words else "") + f"), "
          f"{m['world_size']} Horovod ranks, {len(m['history'])} epochs")
    print(f"           raw data {demo}/{kind}/raw, dataset {demo}/{kind}/dataset/snapshots/{m['snapshot_id']} "
          f"(train/ validation/ test/ rejected/ metadata.json)")
    print(f"           model {demo}/{kind}/model (checkpoint.pt, metrics.json, metrics.jsonl, evaluation.json, "
          f"confusion_matrix.png, training_curves.png, tensorboard/)")
PY
