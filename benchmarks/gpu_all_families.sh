#!/usr/bin/env bash
# Every registered vlm family on a CUDA GPU, in one go: vlmkit vs transformers generation.
#
#   bash benchmarks/gpu_all_families.sh                 # debug shapes (bf16) + one mid/real shape per family
#   SHAPES=debug bash benchmarks/gpu_all_families.sh    # the debug shapes only (a minute or two)
#   VARIANTS=vlmkit,vlmkit+compile,transformers,transformers+static+compile bash benchmarks/gpu_all_families.sh
#
# Writes benchmarks/results/generate-families-<shapes>-cuda.json (OUT=... to change), renders it
# with render_table.py. Each checkpoint is random weights written once under WORKDIR. The mid/real
# shapes are the smallest published (or benchmark) shape of each family that fits a single GPU and
# the disk twice over (both frameworks load it): LLaVA-NeXT, DeepSeek-VL hybrid and Mistral 3 only
# have 7B / 24B presets, so SHAPES=mid leaves them at their debug shape unless FULL=1.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
SHAPES=${SHAPES:-mid}
VARIANTS=${VARIANTS:-vlmkit,transformers}
WORKDIR=${WORKDIR:-/tmp/vlmkit-bench-gpu}
OUT=${OUT:-benchmarks/results/generate-families-$SHAPES-cuda.json}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_all_families.sh: torch sees no CUDA device here')"

CASES="debug:bfloat16,llava/pixtral-debug:bfloat16"
if [ "$SHAPES" != debug ]; then
  CASES+=",paligemma/mid-300m:bfloat16,llava/clip-b16-llama-300m:bfloat16"
  CASES+=",idefics3/SmolVLM-256M-Instruct:bfloat16,internvl/internvl3-1b-hf:bfloat16"
  CASES+=",deepseek_vl/deepseek-vl-1.3b-chat:bfloat16,qwen2_vl/qwen2-vl-2b-instruct:bfloat16"
  CASES+=",qwen2_5_vl/qwen2.5-vl-3b-instruct:bfloat16"
fi
if [ "${FULL:-0}" = 1 ]; then
  CASES+=",llava_next/llava-v1.6-mistral-7b-hf:bfloat16,deepseek_vl_hybrid/deepseek-vl-7b-chat:bfloat16"
fi

PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/bench_generate.py --device cuda --family all --cases "$CASES" \
  --variants "$VARIANTS" --workdir "$WORKDIR" --json "$OUT" "$@"
PYTHONPATH=${PYTHONPATH:-src} "$PY" benchmarks/render_table.py "$OUT"
