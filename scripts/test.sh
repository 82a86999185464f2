#!/usr/bin/env bash
# The test command (`make test`; CI's .ci/run calls exactly that): the suite once per ComfyUI runtime
# that scripts/setup.sh provides (0.3.75, and 0.8.0 and 0.33.0 when their tarballs are there), then one
# closing line with the totals. setup.sh says per runtime whether the whole suite runs there ("full") or
# only the tests that run ComfyUI minus the browser ones ("integration"). Arguments go to pytest
# (e.g. -k name; a -m of yours replaces the runtime's selection).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
runtimes=$(bash scripts/setup.sh) || exit 1
bash scripts/ensure_chromium.sh || exit 1
mkdir -p test-output
status=0 passed=0 failed=0 skipped=0 report=()
while read -r python comfy version tests; do
  echo "=================== ComfyUI $version ($comfy): ${tests:-full} ==================="
  log="test-output/pytest-comfyui-$version.log"
  selection=()
  [ "${tests:-full}" = integration ] && selection=(-m "comfyui and not browser")
  COMFYUI_PATH="$comfy" ALLEGRO_TEST_OUTPUT="$ROOT/test-output/comfyui-$version" \
    "$python" -m pytest "${selection[@]}" "$@" 2>&1 | tee "$log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  last=$(grep -E '^=* ?[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
  count() { echo "$last" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0; }
  passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
  failed=$((failed + $(count failed) + $(count error)))
  report+=("ComfyUI $version: ${last//=/}")
done <<< "$runtimes"
printf '%s\n' "${report[@]}"
echo "total: $passed passed, $failed failed, $skipped skipped"
exit $status
