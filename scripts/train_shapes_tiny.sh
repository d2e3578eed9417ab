#!/usr/bin/env bash
# Re-create the bundled model vlmkit-shapes-tiny from nothing, step by step:
#   1. train (`vlmkit train shapes_tiny`: renders 30k training scenes of the recipe's world,
#      seed 0, into a temp dir, trains a 3.3M-parameter PaliGemma from scratch, exports HF)
#   2. render the held-out test set: `vlmkit data synth` defaults, a different seed (1000)
#   3. evaluate it on every task with `vlmkit eval` (caption / vqa / detect / ocr)
#   4. copy the export into the package assets
#   5. re-pin the regression test's answers on its 5 fixed scenes
# Every step is seeded; on the same machine and thread count the weights are identical.
# Usage: scripts/train_shapes_tiny.sh [RUN_DIR]   (default runs/shapes_tiny; must not exist)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=${1:-runs/shapes_tiny}
TEST=${TEST_DIR:-runs/shapes_tiny_test}
DEST=src/vlmkit/assets/models/vlmkit-shapes-tiny
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # the 2-core machine the README timing refers to

start=$(date +%s)
"$PY" -m vlmkit train shapes_tiny --out "$RUN"
echo "training took $(( $(date +%s) - start )) s (wall clock, incl. rendering the data)"

[ -f "$TEST/manifest.jsonl" ] || "$PY" -m vlmkit data synth "$TEST" --num-scenes 1000 --seed 1000
for task in caption vqa detect ocr; do  # `vlmkit eval`: the numbers docs/bundled_model.md reports
  "$PY" -m vlmkit eval --model "$RUN/export" --data "$TEST/manifest.jsonl" --task "$task" --dtype float32 \
    --batch-size 64 --json "$RUN/eval_$task.json" --quiet
done

rm -rf "$DEST" && mkdir -p "$DEST"
cp "$RUN"/export/{config.json,model.safetensors,preprocessor_config.json,special_tokens_map.json} "$DEST"/
cp "$RUN"/export/{tokenizer.json,tokenizer.model,tokenizer_config.json} "$DEST"/
"$PY" tests/regression/test_bundled_model.py --regen
du -sh "$DEST"
