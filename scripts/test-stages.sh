#!/usr/bin/env bash
# scripts/test-stages.sh STAGE...: the stages of `make test`, one `make STAGE` each, in order,
# stopping at the first that fails. Prints a table at the end (and after a failure): each stage
# with its duration and its passed, failed, ignored and skipped counts, so a run that skipped its
# real-pod tests cannot look like a full one.
#
# Counted from each stage's own output by scripts/lib/stage-counts.awk: cargo's `test result:`
# lines (passed, failed, ignored) and the scripts' one-line verdicts (`ok`/`PASS`, `FAIL`,
# `SKIP`/`skip`). Stages after a failed one are listed as not run.
#
# A skipped or ignored check in a real-pod stage (REAL_POD_STAGES) fails the run unless
# SCALEDAPP_REAL_NODE=0 was set by whoever started it: the only reason a machine that can run
# the real node may leave it out. (The real-pod tests are `#[ignore]`d in a plain `cargo test`;
# e2e/real-pods.sh runs them with `--ignored`, so an ignored one in these stages did not run.)
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
REAL_POD_STAGES=${REAL_POD_STAGES:-real-node-smoke e2e}
[[ $# -gt 0 ]] || { echo "usage: $0 STAGE..." >&2; exit 2; }
LOGS=$(mktemp -d)
trap 'rm -rf "${LOGS}"' EXIT

rows=()
status=0
assume_done=(-o deps)
summary() {
  printf '\n%-18s %8s %7s %7s %8s %8s  %s\n' stage seconds passed failed ignored skipped result
  local row
  for row in "${rows[@]}"; do
    # shellcheck disable=SC2086 # a row is whitespace-separated fields
    printf '%-18s %8s %7s %7s %8s %8s  %s\n' ${row}
  done
}

for stage in "$@"; do
  log="${LOGS}/${stage}.log"
  printf '== stage %s (%s)\n' "${stage}" "$(date -u +%H:%M:%S)"
  started=${SECONDS}
  # Stages already run (and `deps`, which `make test` ran first) are not remade as another
  # stage's prerequisites: `make e2e` would rebuild the images `make images` just built.
  make --no-print-directory -C "${ROOT}" "${assume_done[@]}" "${stage}" 2>&1 | tee "${log}"
  code=${PIPESTATUS[0]}
  seconds=$((SECONDS - started))
  read -r passed failed ignored skipped < <(awk -f "${ROOT}/scripts/lib/stage-counts.awk" "${log}")
  result=passed
  [[ ${code} -eq 0 ]] || result=failed
  left_out=$((skipped + ignored))
  if [[ ${code} -eq 0 && ${left_out} -gt 0 && " ${REAL_POD_STAGES} " == *" ${stage} "* ]]; then
    if [[ "${SCALEDAPP_REAL_NODE:-1}" == 0 ]]; then
      result="skipped-by-request"
    else
      result="failed-skipped"
      printf '== stage %s left out %s real-pod checks (%s skipped, %s ignored), but SCALEDAPP_REAL_NODE=0 was not set: a machine that can run the real node must run them\n' \
        "${stage}" "${left_out}" "${skipped}" "${ignored}"
    fi
  fi
  rows+=("${stage} ${seconds} ${passed} ${failed} ${ignored} ${skipped} ${result}")
  printf '== stage %s: %s in %ss\n' "${stage}" "${result}" "${seconds}"
  if [[ ${result} == failed* ]]; then
    status=1
    break
  fi
  assume_done+=(-o "${stage}")
done
# The stages a failure kept from running: listed, so the table never looks like a whole run.
for stage in "${@:$((${#rows[@]} + 1))}"; do
  rows+=("${stage} - - - - - not-run")
done
summary
exit "${status}"
