#!/usr/bin/env bash
# GPU smoke matrix on one node with all visible GPUs: bf16 ZeRO-1/2/3, hpZ, optimizer / parameter
# offload, NCCL. Records MFU, tokens/s and peak memory (max over ranks) against `seq2vae plan`'s
# prediction in OUT/results.jsonl and OUT/results.md. Run from the repository root with seq2vae installed:
#   bash bench/gpu_smoke.sh [OUT]   (default OUT: gpu-smoke-<date>)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-gpu-smoke-$(date +%Y%m%d-%H%M%S)}"
unset DS_ACCELERATOR  # DeepSpeed must find CUDA
# cpu_adam (the offload presets) is JIT-built once into a per-user cache; keep it off shared homes.
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-${TMPDIR:-/tmp}/torch_extensions_$(id -u)}"
export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python bench/gpu_smoke.py --out "$OUT" "${@:2}"
echo "results: $OUT/results.md"
