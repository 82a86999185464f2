#!/usr/bin/env bash
# The test command (`make test`; CI's .ci/run calls exactly that): the whole suite once per ComfyUI
# runtime that scripts/setup.sh provides (0.3.75, and 0.8.0 when its tarball is there), then one
# closing line with the totals. Arguments go to pytest (e.g. -m "not browser", -k name).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
runtimes=$(bash scripts/setup.sh) || exit 1
bash scripts/ensure_chromium.sh || exit 1
mkdir -p test-output
status=0 passed=0 failed=0 skipped=0 report=()
while read -r python comfy version; do
  echo "=================== ComfyUI $version ($comfy) ==================="
  log="test-output/pytest-comfyui-$version.log"
  COMFYUI_PATH="$comfy" ALLEGRO_TEST_OUTPUT="$ROOT/test-output/comfyui-$version" \
    "$python" -m pytest --durations=15 "$@" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  last=$(grep -E '^=* ?[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
  count() { echo "$last" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0; }
  passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
  failed=$((failed + $(count failed) + $(count error)))
  report+=("ComfyUI $version: ${last//=/}")
done <<< "$runtimes"
# The numerics tests once more, on the first runtime, under a CPU kernel level below this machine's own: a
# tolerance tuned to one CPU's kernels fails here rather than on the next person's machine (tests/numerics.py).
read -r python comfy version <<< "$(head -n 1 <<< "$runtimes")"
own=$("$python" -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
case "$own" in AVX512) other=avx2 ;; AVX2) other=default ;; *) other= ;; esac
if [ -n "$other" ] && [ $# -eq 0 ]; then
  echo "=================== numerics tests under ATEN_CPU_CAPABILITY=$other (this CPU: $own), ComfyUI $version ==================="
  log="test-output/pytest-numerics-$other.log"
  ATEN_CPU_CAPABILITY=$other COMFYUI_PATH="$comfy" ALLEGRO_TEST_OUTPUT="$ROOT/test-output/numerics-$other" \
    "$python" -m pytest -m numerics 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  last=$(grep -E '^=* ?[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
  passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
  failed=$((failed + $(count failed) + $(count error)))
  report+=("numerics under $other: ${last//=/}")
else
  echo "(numerics tests not repeated under another kernel level: this CPU's is $own${other:+; a partial run was asked for})"
fi
printf '%s\n' "${report[@]}"
echo "total: $passed passed, $failed failed, $skipped skipped"
exit $status
