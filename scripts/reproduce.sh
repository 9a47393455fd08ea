#!/usr/bin/env bash
# Reproduce every number in the model cards (bundles/<task>/docs/README.md) and the README's results table:
# convert the real development sets from ../shared/data, train each bundle's default recipe on fold 0, evaluate at
# the original size, re-evaluate the checkpoints over the evaluation-time options, run the speed benchmarks, and
# rewrite the cards' generated results blocks. Records (with hardware, time and commit) go to benchmarks/results/.
#
#   bash scripts/reproduce.sh                 # everything (about 2 h on 2 free CPU cores)
#   bash scripts/reproduce.sh accuracy        # one stage: convert | accuracy | postprocess | speed | cards | levers
#   (levers, the sweeps behind the defaults, is not part of "all": about 14 h more on 2 cores)
#
# Run it on an otherwise idle machine: the timings are only comparable within one run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh >/dev/null
PY=.venv/bin/python
SHARED=${SHARED_DATA:-../shared/data}
STAGE=${1:-all}

convert() {
    [ -d "$SHARED" ] || { echo "no $SHARED: the real development sets are needed (see README, Data)"; exit 1; }
    [ -f data/prepared/ph2/datalist.json ] || $PY scripts/convert.py ph2 --src "$SHARED/ph2/PH2Dataset" --out data/prepared/ph2
    [ -f data/prepared/brain178/datalist.json ] || $PY scripts/convert.py coco --src "$SHARED/brain_tumor/roboflow_polygons_178" --out data/prepared/brain178
    [ -f data/prepared/brain2146/datalist.json ] || $PY scripts/convert.py coco --src "$SHARED/brain_tumor/roboflow_2146" --out data/prepared/brain2146
    [ -f data/prepared/ctrus/datalist.json ] || $PY scripts/convert.py csv_folders --src "$SHARED/ctrus" --out data/prepared/ctrus
    [ -f data/prepared/glas/datalist.json ] || $PY scripts/convert.py instance_masks --src "$SHARED/glas" --out data/prepared/glas
}

accuracy() {
    # each bundle's default recipe (tasks.json values; no time cap)
    $PY scripts/bench_accuracy.py run --tasks all --minutes 0
}

postprocess() {
    $PY scripts/bench_accuracy.py postprocess --tasks ph2_melanoma \
        --grid '{"tta_views": [1, 4], "keep_largest_component": [false, true], "fill_holes": [false, true]}'
    $PY scripts/bench_accuracy.py postprocess --tasks ipmn_histology \
        --grid '{"tta_views": [1, 4], "fill_holes": [false, true], "min_component_fraction": [0.0, 0.001]}'
    $PY scripts/bench_accuracy.py postprocess --tasks brain_tumor \
        --grid '{"tta_views": [1, 4], "keep_largest_component": [false, true], "fill_holes": [false, true]}'
    $PY scripts/bench_accuracy.py postprocess --tasks trus_prostate \
        --grid '{"tta_views": [1], "keep_largest_component": [false, true], "min_component_fraction": [0.0, 0.003, 0.01, 0.02, 0.03]}'
    $PY scripts/bench_empty_cases.py run --task trus_prostate
}

levers() {
    # the comparisons behind the defaults (each row of the sweep tables; sweeps add up per task). Each grid names
    # every key it moves away from today's default, so it reproduces its rows after the defaults changed.
    # PH2 (default: unet, dicece, 240 epochs, bf16): network x loss; the 120-epoch fp32 recipe, 3 seeds; colour jitter;
    # elastic deformation at 240 epochs
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"network": ["unet", "segnet"], "loss": ["dicece", "dice_bce"], "amp": [false]}' --max_epochs 20
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"amp": [false], "seed": [0, 1, 2]}' --max_epochs 120
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"amp": [false], "colour_aug": [0.1]}' --max_epochs 120
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"elastic_prob": [0.5]}' --max_epochs 240
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"ema_decay": [0.99]}' --max_epochs 120
    # seeds 0-2 of the default, then with colour constancy and with hair removal (neither became a default)
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"seed": [0, 1, 2]}' --max_epochs 240
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"colour_constancy_power": [6], "seed": [0, 1]}' --max_epochs 240
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"hair_removal_threshold": [0.1], "seed": [0, 1, 2]}' --max_epochs 240
    $PY scripts/bench_accuracy.py cases ph2_melanoma --runs sweep/ph2_melanoma/seed-0_240ep,sweep/ph2_melanoma/hair_removal_threshold-0.1_seed-0_240ep,sweep/ph2_melanoma/seed-1_240ep,sweep/ph2_melanoma/hair_removal_threshold-0.1_seed-1_240ep,sweep/ph2_melanoma/seed-2_240ep,sweep/ph2_melanoma/hair_removal_threshold-0.1_seed-2_240ep --name hair
    # GlaS / IPMN (default: 384^2, 150 epochs, bf16, colour 0.1, elastic 0.5): resolution and seeds of the
    # 50-epoch fp32 recipe; the augmentations at 50 epochs; 100 epochs without them; 100 and 150 epochs, seeds
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"spatial_size": [[256, 256], [384, 384], [512, 512]], "amp": [false], "colour_aug": [0.0], "elastic_prob": [0.0]}' --max_epochs 50
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"amp": [false], "colour_aug": [0.0], "elastic_prob": [0.0], "seed": [1, 2]}' --max_epochs 50
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"amp": [false], "colour_aug": [0.1], "elastic_prob": [0.0, 0.5]}' --max_epochs 50
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"colour_aug": [0.0], "elastic_prob": [0.0]}' --max_epochs 100
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"seed": [0, 1]}' --max_epochs 100
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"seed": [0, 1, 2]}' --max_epochs 150
    # brain (default: 160 epochs bf16 after the 8-epoch box pre-training): without pre-training, with the augmentations; 120 epochs;
    # elastic deformation
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid '{"init_weights": [null], "colour_aug": [0.1], "elastic_prob": [0.5], "amp": [true]}' --max_epochs 60
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid '{"amp": [true]}' --max_epochs 120
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid '{"elastic_prob": [0.5]}' --max_epochs 160
    # longer pre-training (14 epochs in bf16), two seeds (the first stage is trained once and reused)
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid '{"pretrain_max_epochs": [14], "pretrain_amp": [true]}' --max_epochs 160
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid '{"pretrain_max_epochs": [14], "pretrain_amp": [true], "seed": [1]}' --max_epochs 160
    # seed 1 of the default; weight averaging from the default's stage-1 checkpoint (left by the run above)
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid '{"seed": [1]}' --max_epochs 160
    $PY scripts/bench_accuracy.py sweep brain_tumor --grid "{\"init_weights\": [\"$PWD/benchmarks/work/pretrain/brain_tumor/dataset-brain2146_max_epochs-8_amp-False/models/model.pt\"], \"ema_decay\": [0.99]}" --max_epochs 160
    # C-TRUS (default 256^2, 60 epochs, bf16): resolution and seeds of the 20-epoch fp32 recipe; bf16 for 40 epochs
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"spatial_size": [[256, 256], [384, 384]], "amp": [false]}' --max_epochs 20
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"seed": [1, 2], "amp": [false]}' --max_epochs 20
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"amp": [true]}' --max_epochs 40
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"presence_head": [true]}' --max_epochs 60
    $PY scripts/bench_empty_cases.py run --task trus_prostate --run sweep/trus_prostate/presence_head-True_60ep --overrides '{"presence_head": true}'
    # can an image classifier alone find the empty scans (the presence head's premise)? mask presence, C-TRUS grade
    $PY scripts/bench_empty_cases.py classifier --task trus_prostate --target presence --size 128
    $PY scripts/bench_empty_cases.py classifier --task trus_prostate --target presence --size 256
    $PY scripts/bench_empty_cases.py classifier --task trus_prostate --target quality --size 128
    # the checkpoint choice (default since 2026-12-06: val_ignore_empty false + val_postprocess true) against before
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"val_ignore_empty": [false], "val_postprocess": [true], "seed": [0, 1, 2]}' --max_epochs 60
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"val_ignore_empty": [true], "val_postprocess": [false], "seed": [0, 1, 2]}' --max_epochs 60
    $PY scripts/bench_accuracy.py sweep trus_prostate --grid '{"val_ignore_empty": [false], "val_postprocess": [false], "seed": [0]}' --max_epochs 60
    # the same checkpoint choice on PH2 and IPMN (left off there)
    $PY scripts/bench_accuracy.py sweep ph2_melanoma --grid '{"val_postprocess": [true], "seed": [0, 1]}' --max_epochs 240
    $PY scripts/bench_accuracy.py sweep ipmn_histology --grid '{"val_postprocess": [true], "seed": [0, 1]}' --max_epochs 150
    # a foreground probability threshold on the records' checkpoints (every bundle keeps the argmax)
    $PY scripts/bench_accuracy.py postprocess --tasks ph2_melanoma --run sweep/ph2_melanoma/seed-0_240ep --grid '{"seed": [0], "foreground_threshold": [null, 0.55, 0.6, 0.65, 0.7, 0.8]}' --name threshold
    $PY scripts/bench_accuracy.py postprocess --tasks brain_tumor --run sweep/brain_tumor/seed-0_160ep --grid '{"seed": [0], "foreground_threshold": [null, 0.3, 0.4, 0.6, 0.7]}' --name threshold
    $PY scripts/bench_accuracy.py postprocess --tasks trus_prostate --run sweep/trus_prostate/val_ignore_empty-False_val_postprocess-True_seed-0_60ep --grid '{"val_ignore_empty": [false], "val_postprocess": [true], "seed": [0], "foreground_threshold": [null, 0.3, 0.4, 0.6, 0.7]}' --name threshold
    # PH2 per-case Dice over every 240-epoch run (the worst-case ceiling)
    $PY scripts/bench_accuracy.py cases ph2_melanoma --name all240 --runs "$(cd benchmarks/work && ls -d sweep/ph2_melanoma/*_240ep | grep -v val_postprocess | paste -sd, -)"
    # the threaded loader against the plain one on a CPU (GPU default only)
    $PY scripts/bench_speed.py run --task ipmn_histology --epochs 8 --seeds 0,1 --amp True --variants '{"threadloader": {"thread_loader": true}}' --record speed_ipmn_histology_cpu_xeon_amx_threadloader
}

speed() {
    if grep -qw -e avx512_bf16 -e amx_bf16 /proc/cpuinfo; then
        $PY scripts/bench_speed.py run --task ph2_melanoma --epochs 8 --seeds 0,1,2 --amp False,True
        $PY scripts/bench_inference.py run --sizes 256,512 --modes fp32,bf16,onnx --threads 2
    else  # no native bf16: --amp True would be fp32 again; records named *_cpu_nobf16*
        $PY scripts/bench_speed.py run --task ph2_melanoma --epochs 8 --seeds 0,1,2 --amp False
        $PY scripts/bench_inference.py run --sizes 256,512 --modes fp32,onnx --threads 2 \
            --out benchmarks/results/inference_cpu_nobf16_2threads.json
        $PY scripts/bench_inference.py run --sizes 256,512 --threads 1 --out benchmarks/results/inference_cpu_nobf16.json
    fi
}

cards() {
    $PY scripts/bench_accuracy.py cards
}

case "$STAGE" in
    all) convert; accuracy; postprocess; speed; cards ;;
    convert|accuracy|postprocess|speed|cards|levers) "$STAGE" ;;
    *) echo "unknown stage $STAGE: all | convert | accuracy | postprocess | speed | cards | levers"; exit 2 ;;
esac
echo "commit $(git rev-parse --short HEAD); results in benchmarks/results/; model cards updated"
