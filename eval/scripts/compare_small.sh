#!/usr/bin/env bash
# [0, 1] against [-1, 1] at CPU scale: trains DeltaNet and Mamba with each eigenvalue range on the embedded
# corpus (configs/default.yaml, STEPS steps each), then runs every evaluation on the four checkpoints and writes
# JSON under $OUT (default runs/compare). docs/evaluation.md's CPU table comes from this script.
#   eval/scripts/compare_small.sh            # about 1 hour on 2 CPU cores (docs/evaluation.md)
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/compare}
STEPS=${STEPS:-600}
PY=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
mkdir -p "$OUT/results"
runs=()
for mixer in deltanet mamba; do
    for neg in false true; do
        run="$OUT/${mixer}_$([ "$neg" = true ] && echo neg || echo 01)"
        runs+=("$run")
        $PY train.py --config configs/default.yaml out_dir="$run" model.mixer="$mixer" \
            model.allow_neg_eigval="$neg" train.max_steps="$STEPS" train.save_every="$STEPS" \
            log.progress_bar=false log.sample_tokens=0 > "$run.log" 2>&1
        name=$(basename "$run")
        $PY -m eval.harness --checkpoint "$run" --tasks lrnn_local --output "$OUT/results/$name.harness.json" >/dev/null
        $PY -m eval.math_eval --checkpoint "$run" --task arithmetic --digits 1-3 --num 50 \
            --out "$OUT/results/$name.arith.json" >/dev/null
        $PY -m eval.math_eval --checkpoint "$run" --task gsm --num 50 --max-new-tokens 128 \
            --out "$OUT/results/$name.gsm.json" >/dev/null
        $PY -m eval.humaneval --checkpoint "$run" --max-new-tokens 128 --out "$OUT/results/$name.humaneval.json" >/dev/null
    done
done
$PY -m eval.perplexity --checkpoint "${runs[@]}" --data code=embedded:code math=embedded:math \
    --lengths 128,256,512,1024,2048 --out "$OUT/results/perplexity.json" --plot "$OUT/results/perplexity.png"
echo "results in $OUT/results"
