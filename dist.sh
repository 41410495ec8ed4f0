#!/usr/bin/env bash
# Release build: one static binary per Linux architecture into dist/, with
# dist/SHA256SUMS and dist/SBOM.txt (`go version -m` of each binary: the Go
# version, the module and its dependencies, the build settings).
#
#   ./dist.sh                 every target below
#   ./dist.sh amd64 armv7     some of them
#
# Reproducible: the same commit and Go version give byte-identical binaries
# wherever the tree is checked out (-trimpath, no build id, the version and
# revision from git, and each architecture level at Go's default rather
# than whatever the environment says).
set -euo pipefail
cd "$(dirname "$0")"

all=(amd64 386 arm64 armv6 armv7 riscv64 ppc64le s390x mips64le loong64)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

version=${VERSION:-$(git describe --tags --always --dirty)}
# Every binary stays under 6.5 MiB but mips64le, whose code is the largest
# and which the TLS server (crypto/tls, x509, the key types: some 420 KB on
# every architecture) took to 6.6 MiB: it has 7 MiB.
max_mib() { if [ "$1" = mips64le ]; then echo 7; else echo 6.5; fi; }
name=tcp_established_exporter

# Only what is set here shapes the binaries: not the user's go env file
# (GOENV=off), nor GOFLAGS or an architecture level from the environment.
unset GOFLAGS GOAMD64 GO386 GOARM GOARM64 GORISCV64 GOPPC64 GOMIPS64 GOEXPERIMENT
export GOENV=off CGO_ENABLED=0 GOOS=linux

rm -rf dist
mkdir dist
for t in "${targets[@]}"; do
	arch=$t
	unset GOARM
	case $t in
	armv6 | armv7) arch=arm GOARM=${t#armv} && export GOARM ;;
	amd64 | 386 | arm64 | riscv64 | ppc64le | s390x | mips64le | loong64) ;;
	*)
		echo "dist.sh: unknown target $t (one of ${all[*]})" >&2
		exit 2
		;;
	esac
	out=dist/$name-$version-linux-$t
	# -gcflags: as in the Dockerfile, which says why.
	GOARCH=$arch go build -trimpath -buildvcs=true -gcflags='crypto/...=-l' \
		-ldflags="-s -w -buildid= -X main.version=$version" -o "$out" .
	size=$(wc -c <"$out")
	limit=$(max_mib "$t")
	if [ "$size" -gt "$(awk -v m="$limit" 'BEGIN { print int(m * 1048576) }')" ]; then
		echo "dist.sh: $out is $size bytes, more than $limit MiB" >&2
		exit 1
	fi
	printf '%-12s %8d bytes\n' "$t" "$size"
done

(
	cd dist
	sha256sum -- "$name"-* >SHA256SUMS
	go version -m -- "$name"-* >SBOM.txt
)
echo "dist.sh: $version: $(wc -l <dist/SHA256SUMS) binaries, SHA256SUMS and SBOM.txt in dist/"
