#!/usr/bin/env bash
# Holds the unit to `systemd-analyze verify` (no message at all) and to an
# exposure score of at most 1.5 in `systemd-analyze security --offline=yes`.
# verify runs in a scratch root holding the system's units, the unit and a
# stand-in for the binary, so that the check needs no install on this host.
set -euo pipefail
cd "$(dirname "$0")"
unit=tcp_established_exporter.service
max=1.5

if ! command -v systemd-analyze >/dev/null; then
	# test.sh installs it as root; in CI nothing may skip.
	echo "check.sh: systemd-analyze not installed: the unit is not checked" >&2
	[ "${CI:-}" != true ] || exit 1
	exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/local/bin" "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
cp "$unit" "$root/etc/systemd/system/"
printf '#!/bin/sh\n' >"$root/usr/local/bin/tcp_established_exporter"
chmod 0755 "$root/usr/local/bin/tcp_established_exporter"

if ! out=$(systemd-analyze verify --root="$root" "$unit" 2>&1) || [ -n "$out" ]; then
	echo "systemd-analyze verify $unit:" >&2
	echo "${out:-(exit status not 0)}" >&2
	exit 1
fi
echo "systemd-analyze verify $unit: clean"

report=$(systemd-analyze security --offline=yes "./$unit" 2>&1) || true
score=$(printf '%s\n' "$report" | sed -n 's/.*Overall exposure level for .*: \([0-9.]*\) .*/\1/p')
if [ -z "$score" ]; then
	printf '%s\n' "$report" >&2
	echo "systemd-analyze security: no overall exposure level" >&2
	exit 1
fi
# --threshold is the highest score allowed, times ten.
if ! systemd-analyze security --offline=yes --threshold=15 "./$unit" >/dev/null 2>&1; then
	printf '%s\n' "$report" | grep '✗' >&2 || true
	echo "systemd-analyze security $unit: exposure $score, more than $max" >&2
	exit 1
fi
echo "systemd-analyze security $unit: exposure $score (at most $max)"
