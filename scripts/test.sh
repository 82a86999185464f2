#!/usr/bin/env bash
# The test command (`make test`; CI's .ci/run calls exactly that), then one closing line with the totals.
#
# Passes: the suite once per ComfyUI runtime that scripts/setup.sh provides (0.3.75, and 0.8.0 and 0.33.0 when
# their tarballs are there) — the whole suite where setup.sh says "full", the tests that run ComfyUI minus the
# browser ones where it says "integration" — and the tests marked `numerics` once more on the first runtime under
# a CPU kernel level below this machine's own (avx2 on an AVX-512 CPU, default on an AVX2 one), so a tolerance
# tuned to one CPU's kernels fails here rather than on the next machine (tests/support/numerics.py).
#
# The passes run in two lanes at once, one thread each, where the machine has two cores or more: most of a pass
# is one core's work (Python, process starts, a server or the browser waiting), so two lanes take much less
# than twice one. ALLEGRO_TEST_LANES=1 runs them one after another. Each pass writes
# test-output/pytest-<pass>.log, printed whole when its lane is done. Arguments go to pytest (e.g. -k name;
# a -m of yours replaces a pass's selection); with arguments the numerics pass is left out.
# ALLEGRO_SPREAD_DIR=<folder> keeps every comparison's measured error (python -m scripts.measure_spread --from).
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
runtimes=$(bash scripts/setup.sh) || exit 1
bash scripts/ensure_chromium.sh || exit 1
mkdir -p test-output
cores=$(nproc 2>/dev/null || echo 1)
lanes=${ALLEGRO_TEST_LANES:-$([ "$cores" -ge 2 ] && echo 2 || echo 1)}
threads=$(( cores / lanes > 0 ? cores / lanes : 1 ))

# One pass a line: name, python, ComfyUI folder, kernel level ("-" = the machine's own), weight, selection.
passes=()
while read -r python comfy version tests; do
  case "${tests:-full}" in
    integration) passes+=("comfyui-$version|$python|$comfy|-|2|comfyui and not browser") ;;
    *) passes+=("comfyui-$version|$python|$comfy|-|3|") ;;
  esac
done <<< "$runtimes"
read -r python comfy _ <<< "$(head -n 1 <<< "$runtimes")"
own=$("$python" -c "import torch; print(torch.backends.cpu.get_cpu_capability())")
case "$own" in AVX512) other=avx2 ;; AVX2) other=default ;; *) other= ;; esac
if [ -n "$other" ] && [ $# -eq 0 ]; then
  passes+=("numerics-$other|$python|$comfy|$other|1|numerics")
else
  echo "(numerics tests not repeated under another kernel level: this CPU's is $own${other:+; a partial run was asked for})"
fi

run_pass() {  # one line of $passes, then pytest's arguments
  local name python comfy level weight selection
  IFS='|' read -r name python comfy level weight selection <<< "$1"; shift
  local select=()
  [ -n "$selection" ] && select=(-m "$selection")
  [ "$level" = - ] && level=
  echo "=================== $name ($comfy${level:+, ATEN_CPU_CAPABILITY=$level}${selection:+, -m \"$selection\"}) ==================="
  env ${level:+ATEN_CPU_CAPABILITY=$level} OMP_NUM_THREADS="$threads" COMFYUI_PATH="$comfy" \
    ALLEGRO_TEST_OUTPUT="$ROOT/test-output/$name" \
    ${ALLEGRO_SPREAD_DIR:+ALLEGRO_SPREAD_RECORD=$ALLEGRO_SPREAD_DIR/$name.jsonl} \
    "$python" -m pytest --durations=15 "${select[@]}" "$@"
}

# Heaviest passes first, each to the lane with the least weight so far.
mapfile -t passes < <(printf '%s\n' "${passes[@]}" | sort -t'|' -k5,5nr -s)
declare -a lane_of lane_weight
for ((l = 0; l < lanes; l++)); do lane_weight[l]=0; done
for i in "${!passes[@]}"; do
  best=0
  for ((l = 1; l < lanes; l++)); do [ "${lane_weight[l]}" -lt "${lane_weight[best]}" ] && best=$l; done
  lane_of[i]=$best
  lane_weight[best]=$(( lane_weight[best] + $(cut -d'|' -f5 <<< "${passes[i]}") ))
done
echo "$(( ${#passes[@]} )) passes in $lanes lane(s), $threads thread(s) each; logs in test-output/pytest-<pass>.log"
start=$SECONDS
for ((l = 0; l < lanes; l++)); do
  (
    for i in "${!passes[@]}"; do
      [ "${lane_of[i]}" -eq "$l" ] || continue
      name=${passes[i]%%|*}
      began=$SECONDS
      run_pass "${passes[i]}" "$@" > "test-output/pytest-$name.log" 2>&1
      echo "$?" > "test-output/pytest-$name.status"
      echo "[$name done in $(( (SECONDS - began) / 60 )) min $(( (SECONDS - began) % 60 )) s]"
    done
  ) &
done
wait

status=0 passed=0 failed=0 skipped=0 report=()
for pass in "${passes[@]}"; do
  name=${pass%%|*}
  log="test-output/pytest-$name.log"
  cat "$log"
  [ "$(cat "test-output/pytest-$name.status" 2>/dev/null)" = 0 ] || status=1
  last=$(grep -E '^=* ?[0-9]+ (passed|failed|error)' "$log" | tail -n 1)
  count() { echo "$last" | grep -oE "[0-9]+ $1" | grep -oE '^[0-9]+' || echo 0; }
  passed=$((passed + $(count passed))) skipped=$((skipped + $(count skipped)))
  failed=$((failed + $(count failed) + $(count error)))
  [ -n "$last" ] || { failed=$((failed + 1)); last="no pytest summary: see $log"; }
  report+=("$name: ${last//=/}")
done
printf '%s\n' "${report[@]}"
echo "all passes: $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s in $lanes lane(s)"
echo "total: $passed passed, $failed failed, $skipped skipped"
exit $status
