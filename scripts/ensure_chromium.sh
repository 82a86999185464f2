#!/usr/bin/env bash
# The browser tests drive Debian's chromium (never a downloaded browser). Install it when missing.
set -euo pipefail
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Debian's chromium for the browser tests" >&2
  apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null
else
  echo "[setup] chromium is missing and cannot be installed here: the browser tests will be skipped" >&2
fi
