#!/usr/bin/env bash
# Issue 20: scripts/lib/stage-counts.awk, which `make test`'s stage table counts with, counts what
# each kind of stage really prints: cargo's `test result:` lines, the scripts' verdicts with and
# without log prefixes, a skip printed right after cargo's "." of the test before, and not the
# quoted output of a failed check. The sample logs and their counts are in stage-logs/.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SAMPLES="${REPO}/e2e/cluster/tests/stage-logs"
wrong=0
while read -r log expected; do
  [[ -n "${log}" && "${log}" != \#* ]] || continue
  [[ -f "${SAMPLES}/${log}" ]] || fail "stage-logs/expected names ${log}, which is missing"
  got=$(awk -f "${REPO}/scripts/lib/stage-counts.awk" "${SAMPLES}/${log}")
  if [[ "${got}" != "${expected}" ]]; then
    echo "${log}: counted '${got}' (passed failed ignored skipped), expected '${expected}'"
    wrong=$((wrong + 1))
  fi
done <"${SAMPLES}/expected"
[[ ${wrong} -eq 0 ]] || fail "${wrong} sample logs counted wrongly"
# Every sample is checked: a log without an expected line would test nothing.
for sample in "${SAMPLES}"/*.log; do
  grep -q "^$(basename "${sample}") " "${SAMPLES}/expected" || fail "$(basename "${sample}") has no line in stage-logs/expected"
done
