#!/usr/bin/env bash
# GPU smoke matrix on one node, runnable as is on a bare GPU machine with no network:
#   1. offline set-up: bench/wheels (DeepSpeed built with DS_BUILD_OPS=0, pydantic, hjson, webdataset,
#      braceexpand; see bench/prepare_wheels.sh) installed with pip --no-index, the project with --no-deps;
#   2. a version check (OUT/versions.txt);
#   3. bench/gpu_smoke.py: bf16 ZeRO-2 and ZeRO-3 runs of a random t5-large-shaped VAE, each with its own
#      timeout, OUT/results.json and OUT/results.md written after every run.
# The whole script stays inside SMOKE_BUDGET_S (default 480 s).
#   bash bench/gpu_smoke.sh [--dry-run] [OUT] [gpu_smoke.py options...]
# --dry-run: CPU, tiny model, one rank, seconds; checks the wheel set instead of installing it (CI).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
OUT="gpu-smoke-$(date +%Y%m%d-%H%M%S)"
if [[ $# -gt 0 && "$1" != --* ]]; then OUT="$1"; shift; fi
mkdir -p "$OUT"
BUDGET_S="${SMOKE_BUDGET_S:-480}"
PYTHON="${PYTHON:-python3}"
SITE="${TMPDIR:-/tmp}/seq2vae-smoke-site"
SECONDS=0

install_offline() {
    if "$PYTHON" -c "import deepspeed, pydantic, hjson, webdataset, braceexpand" 2>/dev/null; then
        echo "set-up: deepspeed, pydantic, hjson, webdataset, braceexpand already importable"
    elif ! timeout 150 "$PYTHON" -m pip install -q --no-index --no-cache-dir --find-links bench/wheels \
            deepspeed==0.19.8 pydantic hjson webdataset braceexpand; then
        # Resolving against the image failed (a conflict, a read-only environment): the carried
        # wheels alone into a folder of their own, ahead on the path.
        echo "set-up: resolving install failed; installing bench/wheels/*.whl with --no-deps into $SITE"
        timeout 150 "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" bench/wheels/*.whl || return 1
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! timeout 120 "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-cache-dir .; then
        # The checkout itself as the package `seq2vae` (its root is the import root).
        echo "set-up: pip could not install the project; importing it from this checkout"
        mkdir -p "$SITE-root" && ln -sfn "$PWD" "$SITE-root/seq2vae"
        export PYTHONPATH="$SITE-root${PYTHONPATH:+:$PYTHONPATH}"
    fi
}

if [[ $DRY_RUN == 1 ]]; then
    export DS_ACCELERATOR=cpu
    "$PYTHON" bench/gpu_smoke.py --check-wheels || exit 1
else
    unset DS_ACCELERATOR  # DeepSpeed must find CUDA
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    install_offline || { echo "set-up failed" | tee "$OUT/results.md"; exit 1; }
fi
export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1 TOKENIZERS_PARALLELISM=false

"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/versions.txt"
import importlib, sys
import torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| devices", torch.cuda.device_count())
for name in ("deepspeed", "transformers", "accelerate", "pydantic", "webdataset", "tokenizers", "safetensors", "numpy"):
    module = importlib.import_module(name)
    print(f"{name} {getattr(module, '__version__', '?')} ({module.__file__})")
import seq2vae, seq2vae.train.trainer  # the trainer's whole import graph, datasets not among it
from deepspeed.accelerator import get_accelerator
print("seq2vae", seq2vae.__file__, "| DeepSpeed accelerator", get_accelerator()._name,
      "| datasets imported:", "datasets" in sys.modules)
PY
[[ ${PIPESTATUS[0]} == 0 ]] || { echo "version check failed" | tee -a "$OUT/results.md"; exit 1; }

DRY_FLAG=()
[[ $DRY_RUN == 1 ]] && DRY_FLAG=(--dry-run)
"$PYTHON" bench/gpu_smoke.py --out "$OUT" "${DRY_FLAG[@]}" --budget-s $(( BUDGET_S - SECONDS - 15 )) "$@"
status=$?
echo "set-up + matrix: ${SECONDS} s; results: $OUT/results.md"
exit $status
