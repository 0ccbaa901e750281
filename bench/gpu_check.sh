#!/usr/bin/env bash
# charloom on a CUDA machine, in one go (a few minutes):
#   1. the test suite's CUDA-marked tests,
#   2. a short bf16 training run on the GPU (60 s),
#   3. sampling on the GPU,
#   4. that CUDA-trained checkpoint loaded on the CPU (sample, eval, info),
#   5. the lecture's per-step LSTMCell system on the GPU (the setup that crashed its notebook),
#   6. the speed benchmark: chars/s and model FLOP/s against the measured bf16 matmul peak.
#
#   bench/gpu_check.sh [TEXT]     TEXT: a training text (default ../shared/data/tinyshakespeare.txt)
#
# Environment: PYTHON (default .venv/bin/python if present, else python3), OUT (default
# /tmp/charloom-gpu-check: the runs and the speed figures, gpu_speed.json).
set -euo pipefail
cd "$(dirname "$0")/.."

TEXT=${1:-../shared/data/tinyshakespeare.txt}
OUT=${OUT:-/tmp/charloom-gpu-check}
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
step() { printf '\n== %s (%ds so far)\n' "$1" "$SECONDS"; }

if ! command -v nvidia-smi >/dev/null 2>&1; then
  echo "gpu_check: nvidia-smi not found: this is not a CUDA machine" >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
[[ -f "$TEXT" ]] || { echo "gpu_check: no training text at $TEXT (give one as argument)" >&2; exit 1; }
"$PYTHON" - <<'PY'
import torch
assert torch.cuda.is_available(), "torch sees no CUDA device (a CPU-only torch build?)"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
      f"{torch.cuda.get_device_name()}")
PY
rm -rf "$OUT" && mkdir -p "$OUT"

step "1. CUDA-marked tests"
"$PYTHON" -m pytest -q -m cuda -p no:cacheprovider tests

step "2. a short bf16 training run on the GPU"
"$PYTHON" -m charloom train "$TEXT" --device cuda --precision bf16 --preset medium --time 60s \
  --out "$OUT/run" --no-bar

step "3. sampling on the GPU"
"$PYTHON" -m charloom sample "$OUT/run" --device cuda --length 300 --seed 1

step "4. the CUDA-trained checkpoint on the CPU"
head -c 100000 "$TEXT" > "$OUT/held-out.txt"
"$PYTHON" -m charloom sample "$OUT/run" --device cpu --length 200 --seed 1
"$PYTHON" -m charloom eval "$OUT/run" "$OUT/held-out.txt" --device cpu
"$PYTHON" -m charloom info "$OUT/run"

step "5. the lecture's per-step system on the GPU"
"$PYTHON" -m charloom train "$TEXT" --device cuda --preset seed --iters 400 --out "$OUT/seed" \
  --quiet
"$PYTHON" -m charloom sample "$OUT/seed" --device cuda --length 100 --seed 1

step "6. speed: chars/s and model FLOP/s against the bf16 matmul peak"
"$PYTHON" bench/gpu_speed.py --device cuda --json | tee "$OUT/gpu_speed.txt"
head -n 1 "$OUT/gpu_speed.txt" > "$OUT/gpu_speed.json"

printf '\ngpu_check: all passed in %ds; figures in %s/gpu_speed.json\n' "$SECONDS" "$OUT"
