#!/usr/bin/env bash
# Issue 20: `make test`'s stage summary counts each stage's checks, and a real-pod stage that
# skipped fails the run unless SCALEDAPP_REAL_NODE=0 was set. Fake stages stand in for the real
# ones (a Makefile of their own); test-stage-counts-from-sample-logs.sh tests the counting on
# real stages' output.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
copy_repo scripts/test-stages.sh scripts/lib/stage-counts.awk
cat >"${SCRATCH}/repo/Makefile" <<'MAKEFILE'
unit:
	@echo "test result: ok. 5 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out"
	@echo "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out"
	@echo "  PASS  a script check"
e2e:
	@echo "[e2e 12:00:00] ok   the suite"
	@echo "[e2e 12:00:00] SKIP the tests on real pods: no real node"
ignored:
	@echo "test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out"
after:
	@echo "after ran"
MAKEFILE
stages="${SCRATCH}/repo/scripts/test-stages.sh"

# Without SCALEDAPP_REAL_NODE=0 the skip fails the run, and the stages after it do not run.
if (unset SCALEDAPP_REAL_NODE; "${stages}" unit e2e after) >"${SCRATCH}/out" 2>&1; then
  cat "${SCRATCH}/out"; fail "a real-pod stage skipped and the run passed"
fi
cat "${SCRATCH}/out"
grep -Eq '^unit +[0-9]+ +9 +0 +2 +0 +passed$' "${SCRATCH}/out" || fail "unit's counts are wrong"
grep -Eq '^e2e +[0-9]+ +1 +0 +0 +1 +failed-skipped$' "${SCRATCH}/out" || fail "the skip is not reported"
grep -q 'after ran' "${SCRATCH}/out" && fail "a stage ran after the failed one"
grep -Eq '^after +- +- +- +- +- +not-run$' "${SCRATCH}/out" || fail "the stage the failure kept from running is not listed"

# Real-pod tests ignored in a real-pod stage (cargo test without --ignored) did not run either.
if (unset SCALEDAPP_REAL_NODE; REAL_POD_STAGES=ignored "${stages}" ignored) >"${SCRATCH}/out" 2>&1; then
  cat "${SCRATCH}/out"; fail "a real-pod stage ignored its tests and the run passed"
fi
grep -Eq '^ignored +[0-9]+ +0 +0 +2 +0 +failed-skipped$' "${SCRATCH}/out" || fail "the ignored tests are not reported"
# Outside the real-pod stages an ignored test is only counted.
"${stages}" unit >"${SCRATCH}/out" 2>&1 || { cat "${SCRATCH}/out"; fail "an ignored unit test failed the run"; }

# With it, the skip is allowed and printed as one.
SCALEDAPP_REAL_NODE=0 "${stages}" unit e2e after >"${SCRATCH}/out" 2>&1 || {
  cat "${SCRATCH}/out"; fail "a requested skip failed the run"
}
grep -Eq '^e2e +[0-9]+ +1 +0 +0 +1 +skipped-by-request$' "${SCRATCH}/out" || fail "the requested skip is not printed as one"
grep -q 'after ran' "${SCRATCH}/out" || fail "the stages after a requested skip did not run"

# A failing stage fails the run with its exit status, and the table is still printed.
printf 'broken:\n\t@echo "[x] FAIL something"; exit 3\n' >>"${SCRATCH}/repo/Makefile"
if "${stages}" unit broken >"${SCRATCH}/out" 2>&1; then fail "a failing stage passed"; fi
grep -Eq '^broken +[0-9]+ +0 +1 +0 +0 +failed$' "${SCRATCH}/out" || fail "the failed stage is not in the table"
