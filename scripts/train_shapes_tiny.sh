#!/usr/bin/env bash
# Re-create the bundled model vlmkit-shapes-tiny from nothing, step by step:
#   1. stage 1 (`vlmkit train shapes_tiny`: renders 30k training scenes of the recipe's world,
#      seed 0, into a temp dir, trains a 3.3M-parameter PaliGemma from scratch for 5,000 steps,
#      exports HF)
#   2. stage 2: the same recipe and data started from stage 1's export, a fresh warm-up + cosine
#      over 8,500 more steps, another shuffle of the rows (see the recipe's docstring for why
#      stages rather than one longer run)
#   2b. stage 3: from stage 2's export, 7,000 steps on the same rows plus 24,000 extra scenes that
#      each show a word and give one `ocr` row (reading practice), rows in a third order
#   2c. stage 4: from stage 3's export, 6,500 steps with 48,000 reading scenes (the first 24,000
#      are stage 3's; OCR 35% of the rows), rows in a fourth order
#   2d. stage 5: from stage 4's export, 7,500 steps at lr 2e-4 on a fresh world (seed 2: 30,000
#      scenes never seen before) plus 24,000 fresh reading scenes (seed 8)
#   3. render the held-out test set: `vlmkit data synth` defaults, a different seed (1000)
#   4. evaluate it on every task with `vlmkit eval` (caption / vqa / detect / ocr)
#   5. copy the export into the package assets
#   6. re-pin the regression test's answers on its 5 fixed scenes
# Every step is seeded; on the same machine and thread count the weights are identical.
# Usage: scripts/train_shapes_tiny.sh [RUN_DIR]   (default runs/shapes_tiny; RUN_DIR,
# RUN_DIR_stage2 ... RUN_DIR_stage5 must not exist)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
RUN=${1:-runs/shapes_tiny}
RUN2=${RUN}_stage2
RUN3=${RUN}_stage3
RUN4=${RUN}_stage4
RUN5=${RUN}_stage5
TEST=${TEST_DIR:-runs/shapes_tiny_test}
DEST=src/vlmkit/assets/models/vlmkit-shapes-tiny
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # the 2-core machine the README timing refers to

start=$(date +%s)
"$PY" -m vlmkit train shapes_tiny --out "$RUN"
echo "stage 1 took $(( $(date +%s) - start )) s (wall clock, incl. rendering the data)"
start=$(date +%s)
"$PY" -m vlmkit train shapes_tiny --model "$RUN/export" --out "$RUN2" --data.shuffle_seed 1 --steps 8500
echo "stage 2 took $(( $(date +%s) - start )) s (wall clock, incl. rendering the data)"
start=$(date +%s)
"$PY" -m vlmkit train shapes_tiny --model "$RUN2/export" --out "$RUN3" --data.shuffle_seed 2 --steps 7000 \
  --data.synthetic_ocr_scenes 24000
echo "stage 3 took $(( $(date +%s) - start )) s (wall clock, incl. rendering the data)"
start=$(date +%s)
"$PY" -m vlmkit train shapes_tiny --model "$RUN3/export" --out "$RUN4" --data.shuffle_seed 3 --steps 6500 \
  --data.synthetic_ocr_scenes 48000
echo "stage 4 took $(( $(date +%s) - start )) s (wall clock, incl. rendering the data)"
start=$(date +%s)
"$PY" -m vlmkit train shapes_tiny --model "$RUN4/export" --out "$RUN5" --data.synthetic_seed 2 --data.shuffle_seed 4 \
  --data.synthetic_ocr_seed 8 --data.synthetic_ocr_scenes 24000 --optim.lr 2e-4 --steps 7500
echo "stage 5 took $(( $(date +%s) - start )) s (wall clock, incl. rendering the data)"

[ -f "$TEST/manifest.jsonl" ] || "$PY" -m vlmkit data synth "$TEST" --num-scenes 1000 --seed 1000
for task in caption vqa detect ocr; do  # `vlmkit eval`: the numbers docs/bundled_model.md reports
  "$PY" -m vlmkit eval --model "$RUN5/export" --data "$TEST/manifest.jsonl" --task "$task" --dtype float32 \
    --batch-size 64 --json "$RUN5/eval_$task.json" --quiet
done

rm -rf "$DEST" && mkdir -p "$DEST"
cp "$RUN5"/export/{config.json,model.safetensors,preprocessor_config.json,special_tokens_map.json} "$DEST"/
cp "$RUN5"/export/{tokenizer.json,tokenizer.model,tokenizer_config.json} "$DEST"/
"$PY" tests/regression/test_bundled_model.py --regen
du -sh "$DEST"
