# A static binary on an empty image: no libc, no shell, nothing to patch
# but the exporter itself. Multi-arch without emulation: the build stage
# runs on the builder's own platform and cross-compiles for the target,
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 \
#     --build-arg VERSION="$(git describe --tags --always --dirty)" \
#     -t tcp_established_exporter .
FROM --platform=$BUILDPLATFORM golang:1.26 AS build
ARG TARGETOS=linux
ARG TARGETARCH
ARG TARGETVARIANT
ARG VERSION=
WORKDIR /src
COPY go.mod ./
COPY *.go ./
# arm/v6 and arm/v7 are GOARM 6 and 7; other variants (amd64/v2, arm64/v8)
# keep Go's default level. The crypto packages are compiled without
# inlining: 320 KB less code, on every architecture, for a TLS handshake
# that costs 0.9 ms instead of 0.55 with an RSA key and the same with ECDSA
# (go test -bench HandshakeServer crypto/tls, with and without the flag).
# Reading the tables touches no crypto.
RUN case "$TARGETARCH/$TARGETVARIANT" in \
	arm/v6) export GOARM=6 ;; \
	arm/v7 | arm/) export GOARM=7 ;; \
	esac && \
	CGO_ENABLED=0 GOOS="$TARGETOS" GOARCH="$TARGETARCH" GOFLAGS= \
	go build -trimpath -buildvcs=false -gcflags='crypto/...=-l' \
	-ldflags="-s -w -buildid= -X main.version=${VERSION}" \
	-o /tcp_established_exporter .

FROM scratch
COPY --from=build /tcp_established_exporter /tcp_established_exporter
# nobody: /proc/net is world-readable, so no privilege is needed.
USER 65534:65534
EXPOSE 9690
ENTRYPOINT ["/tcp_established_exporter"]
