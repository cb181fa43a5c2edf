#!/usr/bin/env bash
# Runs the scripts' own tests (`make script-tests`): every test-*.sh in this directory, each in a
# scratch directory of its own. No cluster, no network, no root needed. Prints one line per test
# and "N passed, N failed"; exits 1 if any failed.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
passed=0
failed=0
for test in "${HERE}"/test-*.sh; do
  name=$(basename "${test}" .sh)
  scratch=$(mktemp -d)
  if output=$(cd "${scratch}" && SCRATCH="${scratch}" bash "${test}" 2>&1); then
    if grep '^SKIP' <<<"${output}" >/dev/null; then
      printf 'skip %s: %s\n' "${name}" "$(grep -m1 '^SKIP' <<<"${output}")"
    else
      printf 'ok   %s\n' "${name}"
    fi
    passed=$((passed + 1))
  else
    printf 'FAIL %s\n' "${name}"
    printf '%s\n' "${output}" | sed 's/^/     /'
    failed=$((failed + 1))
  fi
  rm -rf "${scratch}"
done
echo "script tests: ${passed} passed, ${failed} failed"
[[ ${failed} -eq 0 ]]
