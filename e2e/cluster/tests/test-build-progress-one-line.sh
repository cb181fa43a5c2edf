#!/usr/bin/env bash
# Issue 13 item 12: a build prints one progress line per component and keeps the Go output
# (go: downloading ...) in a log file, whose path and tail are printed when the build fails.
# A fake `go` that downloads noisily and then fails stands in for the Go toolchain.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
copy_repo e2e/cluster/build-tools.sh e2e/cluster/lib.sh e2e/cluster/versions.env
mkdir -p "${SCRATCH}/bin"
cat >"${SCRATCH}/bin/go" <<'GO'
#!/usr/bin/env bash
case "$1 $2" in
  "env GOVERSION" | "version "*) echo "go1.0-fake"; exit 0 ;;
esac
for i in 1 2 3 4 5; do echo "go: downloading example.com/module${i} v1.0.${i}" >&2; done
[[ "$1" == mod && "$2" == init ]] && exit 0
echo "go: fake failure" >&2
exit 1
GO
chmod +x "${SCRATCH}/bin/go"
export GO="${SCRATCH}/bin/go" SCALEDAPP_CACHE="${SCRATCH}/cache"
if "${SCRATCH}/repo/e2e/cluster/build-tools.sh" >"${SCRATCH}/stdout" 2>"${SCRATCH}/stderr"; then
  fail "build-tools.sh succeeded with a failing go"
fi
cat "${SCRATCH}/stderr"
[[ "$(grep -c 'kubernetes v1.34.4: building from Go modules' "${SCRATCH}/stderr")" == 1 ]] ||
  fail "expected exactly one progress line for kubernetes"
grep -q '^go: downloading' "${SCRATCH}/stderr" && fail "go: downloading lines reached the terminal"
log="${SCRATCH}/cache/logs/kubernetes-v1.34.4.log"
grep -q "full log: ${log}" "${SCRATCH}/stderr" || fail "the log path is not printed on failure"
grep -q '^go: downloading example.com/module1' "${log}" || fail "the Go output is not in ${log}"
[[ ! -e "${SCRATCH}/cache/kubernetes-v1.34.4/.build-complete" ]] || fail "a failed build was marked complete"
echo "one progress line, Go output in ${log##*/}, path printed on failure"
