#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, make the embedded synthetic PH2-layout data, convert it to the
# common format, train the PH2 bundle on it (progress bar + per-epoch metrics), evaluate it and run inference.
#   bash scripts/quickstart.sh [extra bundle overrides, e.g. --max_epochs 5]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY="$PWD/.venv/bin/python"
DATA="$PWD/data/prepared/ph2_demo"
[ -f "$DATA/datalist.json" ] || "$PY" scripts/make_samples.py demo ph2 --out "$DATA" --n 40 --seed 0
cd bundles/ph2_melanoma
echo "[quickstart] training bundles/ph2_melanoma on $DATA"
"$PY" -m monai.bundle run --config_file configs/train.json --dataset_dir "$DATA" \
  --max_epochs 20 --spatial_size "[128,128]" "$@"
echo "[quickstart] evaluating (true Dice/Jaccard at the original size, pictures in bundles/ph2_melanoma/eval)"
"$PY" -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']" --dataset_dir "$DATA" \
  --spatial_size "[128,128]" "$@"
echo "[quickstart] inference on the images -> bundles/ph2_melanoma/outputs (masks + findings JSON)"
"$PY" -m monai.bundle run --config_file configs/inference.json --input_dir "$DATA/imagesTr" \
  --spatial_size "[128,128]"
ls outputs | head -n 4
