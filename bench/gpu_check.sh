#!/usr/bin/env bash
# One-shot GPU check (issue 12): run as is on a machine with a CUDA GPU and this package installed
# (README "Set-up"; a CUDA build of torch). ≤ 8 minutes. See bench/gpu_check.py for what is measured.
#   bash bench/gpu_check.sh [OUT_DIR]
# Output: OUT_DIR/gpu_check.json, OUT_DIR/gpu_check.log, OUT_DIR/demo_stream.log; last line key=value figures.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-$(mktemp -d /tmp/gpu_check.XXXX)}}"
mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee "$out/gpu_check.log"
python -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda)" \
  2>&1 | tee -a "$out/gpu_check.log" || exit 2
timeout 480 python bench/gpu_check.py --device cuda --out "$out" 2>&1 | tee -a "$out/gpu_check.log"
rc=${PIPESTATUS[0]}
[ "$rc" = 124 ] && echo "gpu_check: stopped at the 8-minute limit" | tee -a "$out/gpu_check.log"
exit "$rc"
