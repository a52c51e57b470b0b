#!/usr/bin/env bash
# Widening a dependency bound is one command and a measured decision:
#
#   bench/compat.sh            fresh venv, torch 2.13.0, then the NEWEST versions pyproject.toml's bounds
#                              allow (no constraints file); prints what it installed and runs the model
#                              invariants and the injection / LM-head tests on them.
#   bench/compat.sh --pinned   the same with constraints.txt (what CI installs), as a fresh clone gets it.
#   bench/compat.sh --freeze   additionally rewrites constraints.txt from the venv (after the tests pass).
#
# Record the outcome in docs/COMPATIBILITY.md (and bench/RESULTS.md): versions tried, what broke.
# COMPAT_VENV=DIR keeps the venv there (default: a temporary directory, removed at the end).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODE="newest"
FREEZE=0
for arg in "$@"; do
  case "$arg" in
    --pinned) MODE="pinned" ;;
    --freeze) FREEZE=1 ;;
    *) echo "usage: bench/compat.sh [--pinned] [--freeze]" >&2; exit 2 ;;
  esac
done

if [ -n "${COMPAT_VENV:-}" ]; then
  VENV="$COMPAT_VENV"
else
  SCRATCH="$(mktemp -d)"
  trap 'rm -rf "$SCRATCH"' EXIT
  VENV="$SCRATCH/venv"
fi
python3 -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install -q)
CONSTRAINTS=()
if [ "$MODE" = "pinned" ]; then CONSTRAINTS=(-c "$ROOT/constraints.txt"); fi

# torch first and pinned (a local CPU wheel here), so no looser requirement pulls a CUDA build.
"${PIP[@]}" "${CONSTRAINTS[@]}" torch==2.13.0
# A non-editable install of a copy of the working tree (tracked and new files): the venv tests this
# checkout whatever else the machine has installed, and the build leaves nothing in the checkout.
SOURCE="$VENV.source"
rm -rf "$SOURCE" && mkdir -p "$SOURCE"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$SOURCE")
"${PIP[@]}" "${CONSTRAINTS[@]}" "$SOURCE[test]"

echo "== installed ($MODE)"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "transformers", "deepspeed", "accelerate", "datasets", "webdataset", "tokenizers",
             "safetensors", "huggingface-hub", "numpy", "tensorboard"):
    try:
        print(f"{name}=={md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
PY

echo "== tests"
# Run from a scratch directory so `seq2vae` is the installed copy, not the checkout on sys.path.
STATUS=0
(cd "$VENV" && DS_ACCELERATOR=cpu "$VENV/bin/python" -m pytest -q -p no:cacheprovider --rootdir "$SOURCE" \
  -c "$SOURCE/pyproject.toml" \
  "$SOURCE/tests/model/test_invariants.py" "$SOURCE/tests/model/test_backbone_head.py" \
  "$SOURCE/tests/model/test_prefix.py") || STATUS=$?
echo "== result ($MODE): pytest exit $STATUS"

if [ "$FREEZE" = 1 ] && [ "$STATUS" = 0 ]; then
  "$VENV/bin/python" "$ROOT/bench/freeze_constraints.py" > "$ROOT/constraints.txt.new"
  mv "$ROOT/constraints.txt.new" "$ROOT/constraints.txt"
  echo "== constraints.txt rewritten from $VENV"
fi
exit "$STATUS"
