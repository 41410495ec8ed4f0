#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests run as
# separate programs (Debian's prometheus for promtool and a real server,
# iproute2 for ss and network namespaces, qemu-user-static for the other
# architectures' binaries, systemd for systemd-analyze) when missing, then
# checks the formatting, vets, lints the code and the CI workflow, checks
# the systemd unit, runs every test under the race detector, and each
# fuzzer for a bounded time.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v ss >/dev/null && command -v ip >/dev/null || need+=(iproute2)
command -v file >/dev/null || need+=(file)
command -v git >/dev/null || need+=(git)
command -v qemu-aarch64-static >/dev/null && command -v qemu-arm-static >/dev/null &&
	command -v qemu-riscv64-static >/dev/null && command -v qemu-s390x-static >/dev/null || need+=(qemu-user-static)
command -v systemd-analyze >/dev/null || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -eq 0 ]; then
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	else
		echo "test.sh: not root, cannot install ${need[*]}: the tests that need them will skip" >&2
	fi
fi

echo "== gofmt"
unformatted=$(gofmt -l . | grep -v '^testdata/' || true)
if [ -n "$unformatted" ]; then
	echo "gofmt would change: $unformatted" >&2
	exit 1
fi
echo "== go vet"
go vet ./...
echo "== staticcheck"
go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...
echo "== actionlint"
workflow=$PWD/.github/workflows/ci.yml # run outside go.mod, which it must not touch
(cd "${TMPDIR:-/tmp}" && go run github.com/rhysd/actionlint/cmd/actionlint@v1.7.12 "$workflow")
echo "== systemd unit"
deploy/systemd/check.sh
echo "== go test -race"
go test -race -count=1 -timeout 30m ./...
echo "== fuzz"
for f in $(go test -list '^Fuzz' . | grep '^Fuzz'); do
	go test -run '^$' -fuzz "^$f\$" -fuzztime "${FUZZTIME:-20s}" .
done
