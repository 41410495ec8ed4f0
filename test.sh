#!/usr/bin/env bash
# The whole test suite, as CI runs it. It installs what the tests run as
# separate programs when missing: Debian's prometheus (promtool and a real
# server, 2.x), iproute2 (ss, network namespaces), chromium, r-cran-shiny
# and nodejs (real browsers on a real Shiny app and a node server),
# qemu-user-static (the other architectures' binaries), systemd (for
# systemd-analyze), podman, runc and busybox-static (the image built and
# run by a real container engine), systemd-container (the unit booted
# under systemd-nspawn), git, curl, shellcheck (actionlint runs it on the
# workflow's scripts) and openssl (the TLS tests run the commands of
# docs/security.md that make a test CA); and Prometheus 3 with its promtool, built
# from the Go module proxy at a pinned version outside the project's go.mod
# and cached between runs. Then it checks the formatting, vets, lints the
# code and the CI workflow, checks the systemd unit, runs every test under
# the race detector, and each fuzzer for a bounded time.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v ss >/dev/null && command -v ip >/dev/null || need+=(iproute2)
command -v file >/dev/null || need+=(file)
command -v chromium >/dev/null || need+=(chromium)
command -v Rscript >/dev/null && Rscript -e 'library(shiny)' >/dev/null 2>&1 || need+=(r-cran-shiny)
command -v node >/dev/null || need+=(nodejs)
command -v git >/dev/null || need+=(git)
command -v curl >/dev/null || need+=(curl)
command -v shellcheck >/dev/null || need+=(shellcheck) # actionlint checks the workflow's scripts with it
command -v openssl >/dev/null || need+=(openssl)
command -v qemu-aarch64-static >/dev/null && command -v qemu-arm-static >/dev/null &&
	command -v qemu-riscv64-static >/dev/null && command -v qemu-s390x-static >/dev/null || need+=(qemu-user-static)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v podman >/dev/null || need+=(podman) # the image, built and run by a real engine
command -v runc >/dev/null || need+=(runc)     # crun refuses a hybrid cgroup layout
[ -x /bin/busybox ] || need+=(busybox-static)  # /bin/sh of the stand-in builder image
command -v systemd-nspawn >/dev/null || need+=(systemd-container) # the unit under a real systemd
if [ ${#need[@]} -gt 0 ]; then
	if [ "$(id -u)" -eq 0 ]; then
		echo "== installing ${need[*]}"
		apt-get update -qq
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	else
		echo "test.sh: not root, cannot install ${need[*]}: the tests that need them will skip" >&2
	fi
fi

# Prometheus 3.16.0 is module version v0.316.0.
prom3=v0.316.0
prom3_release=3.16.0
export PROMETHEUS3_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/tcp_established_exporter/prometheus-$prom3"
if [ ! -x "$PROMETHEUS3_DIR/prometheus" ] || [ ! -x "$PROMETHEUS3_DIR/promtool" ]; then
	echo "== building Prometheus $prom3_release and promtool into $PROMETHEUS3_DIR"
	mkdir -p "$PROMETHEUS3_DIR"
	# Outside the project, so that its go.mod gains nothing.
	(cd / && GOBIN="$PROMETHEUS3_DIR" go install \
		-ldflags "-X github.com/prometheus/common/version.Version=$prom3_release" \
		"github.com/prometheus/prometheus/cmd/prometheus@$prom3" \
		"github.com/prometheus/prometheus/cmd/promtool@$prom3")
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
# One package at a time: the system tests (browsers, Prometheus servers)
# would otherwise load the machine under the unit tests that hold real
# connections for known times.
go test -race -count=1 -p 1 -timeout 45m ./...
echo "== fuzz"
# Go 1.26's fuzz coordinator can end a run at -fuzztime with a bare
# "context deadline exceeded" and no input (go.dev/issue/75804, fixed in
# Go 1.27): that is a race of its own shutdown, not a finding. A finding
# always writes its input under testdata/fuzz, and still fails the run.
for f in $(go test -list '^Fuzz' . | grep '^Fuzz'); do
	if out=$(go test -run '^$' -fuzz "^$f\$" -fuzztime "${FUZZTIME:-20s}" . 2>&1); then
		printf '%s\n' "$out"
		continue
	fi
	printf '%s\n' "$out"
	if grep -q 'Failing input written' <<<"$out" || ! grep -q 'context deadline exceeded' <<<"$out"; then
		exit 1
	fi
	echo "$f: only the fuzz coordinator's deadline race (go.dev/issue/75804), no failing input: passed"
done
