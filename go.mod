module tcp_established_exporter

go 1.26

require github.com/google/go-cmp v0.7.0
