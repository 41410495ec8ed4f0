# A static binary on an empty image: no libc, no shell, nothing to patch
# but the exporter itself.
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod ./
COPY *.go ./
ARG VERSION=
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=${VERSION}" -o /tcp_established_exporter .

FROM scratch
COPY --from=build /tcp_established_exporter /tcp_established_exporter
# nobody: /proc/net is world-readable, so no privilege is needed.
USER 65534:65534
EXPOSE 9690
ENTRYPOINT ["/tcp_established_exporter"]
