# awk -f scripts/lib/stage-counts.awk LOG...: one `make test` stage's checks, counted from its
# output, printed as "passed failed ignored skipped" (scripts/test-stages.sh reads it; the script
# test test-stage-counts-from-sample-logs.sh runs it on the logs in e2e/cluster/tests/stage-logs).
#
# What counts:
# - cargo's `test result:` lines (one per test binary): their passed, failed and ignored counts;
# - the scripts' one-line verdicts: `ok`/`PASS` (passed), `FAIL` (failed), `SKIP`/`skip`
#   (skipped), at the start of a line, after a `[prefix hh:mm:ss] ` log prefix, or indented by at
#   most 3 blanks (check-images.sh prints "  PASS  ..."). Deeper lines are the quoted output of a
#   failed check (the smoke test indents it by 7, the script tests by 5) and are not verdicts.
#   `cargo test -q -- --nocapture` (e2e/real-pods.sh) prints a test's "." when it passes, with no
#   newline, so the next test's first line (say "SKIP the split-brain fence: ...") follows it:
#   leading dots are not part of a line.
# Written for mawk (Debian's awk): no interval expressions.

/^test result:/ {
  for (i = 1; i < NF; i++) {
    if ($(i + 1) ~ /^passed/) passed += $i
    if ($(i + 1) ~ /^failed/) failed += $i
    if ($(i + 1) ~ /^ignored/) ignored += $i
  }
  next
}

{
  line = $0
  sub(/^\.+/, "", line)
  sub(/^\[[^]]*\] /, "", line)
  match(line, /^[ \t]*/)
  if (RLENGTH > 3) next
  line = substr(line, RLENGTH + 1)
}

line ~ /^(ok|PASS)([ \t]|$)/ { passed++; next }
line ~ /^FAIL([ \t:]|$)/ { failed++; next }
line ~ /^(SKIP|skip)([ \t:]|$)/ { skipped++; next }

END { printf "%d %d %d %d\n", passed, failed, ignored, skipped }
