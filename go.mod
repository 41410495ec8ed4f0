module tcp_established_exporter

go 1.26
