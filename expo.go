package main

import (
	"math"
	"strconv"
)

// The Prometheus text exposition format, version 0.0.4, appended to a byte
// slice: no intermediate values, nothing to allocate once the slice is big
// enough.

const contentType = "text/plain; version=0.0.4; charset=utf-8"

const (
	longtermName    = "netstat_tcp_longterm_connections_total"
	longtermHelp    = "TCP connections that are established for a minimal duration"
	clientsName     = "netstat_tcp_longterm_clients"
	clientsHelp     = "Distinct remote IP addresses among the long-term TCP connections"
	establishedName = "netstat_tcp_established_connections"
	establishedHelp = "TCP connections that are established, whatever their age"
	lifetimeName    = "netstat_tcp_connection_lifetime_seconds"
	lifetimeHelp    = "How long TCP connections lived, from first to last seen established"
)

// connView is what the connection families are written from.
type connView struct {
	labels  []byte     // of the namespace in node mode, without braces; nil otherwise
	simple  bool       // one sample, no labels but the namespace's
	withDir bool       // a direction label before port
	series  []*series  // sorted
	total   *histogram // all lifetimes, for simple mode
	clients int        // distinct remote addresses over all series, for simple mode
}

// connFamilies are the connection families in the order they are written:
// the long-term gauge, the clients gauge, the established gauge and the
// lifetime histogram.
var connFamilies = [...]struct{ name, help, typ string }{
	{longtermName, longtermHelp, "gauge"},
	{clientsName, clientsHelp, "gauge"},
	{establishedName, establishedHelp, "gauge"},
	{lifetimeName, lifetimeHelp, "histogram"},
}

// appendConnMetrics writes the connection families of one view.
func appendConnMetrics(b []byte, v connView) []byte {
	for f, fam := range connFamilies {
		b = appendHeader(b, fam.name, fam.help, fam.typ)
		b = appendConnSamples(b, f, v)
	}
	return b
}

// appendConnSamples writes the samples of connFamilies[f], without its
// header: node mode writes each namespace's under one.
func appendConnSamples(b []byte, f int, v connView) []byte {
	switch f {
	case 0:
		return appendCounts(b, v, longtermName, func(s *series) int { return s.longterm })
	case 1:
		if v.simple { // an address counted on two ports is one client
			return appendIntSample(b, clientsName, v.labels, v.clients)
		}
		return appendCounts(b, v, clientsName, func(s *series) int { return s.clients })
	case 2:
		return appendCounts(b, v, establishedName, func(s *series) int { return s.established })
	}
	if v.simple {
		return appendHistogram(b, v.labels, v.total)
	}
	var labels []byte
	for _, s := range v.series {
		labels = appendViewLabels(labels[:0], v, s)
		b = appendHistogram(b, labels, &s.lifetimes)
	}
	return b
}

func appendCounts(b []byte, v connView, name string, count func(*series) int) []byte {
	if v.simple {
		n := 0
		for _, s := range v.series {
			n += count(s)
		}
		return appendIntSample(b, name, v.labels, n)
	}
	for _, s := range v.series {
		b = append(b, name...)
		b = append(b, '{')
		b = appendViewLabels(b, v, s)
		b = append(b, "} "...)
		b = strconv.AppendInt(b, int64(count(s)), 10)
		b = append(b, '\n')
	}
	return b
}

// appendViewLabels writes the namespace's labels, if any, then the series'.
func appendViewLabels(b []byte, v connView, s *series) []byte {
	if len(v.labels) > 0 {
		b = append(b, v.labels...)
		b = append(b, ',')
	}
	return appendSeriesLabels(b, s.key, v.withDir)
}

// appendSeriesLabels writes `direction="in",port="3838",tcp_version="4"`,
// without braces; all values are digits or words, so nothing to escape.
func appendSeriesLabels(b []byte, k seriesKey, withDir bool) []byte {
	if withDir {
		b = append(b, `direction="`...)
		b = append(b, k.dir.String()...)
		b = append(b, `",`...)
	}
	b = append(b, `port="`...)
	b = strconv.AppendUint(b, uint64(k.port), 10)
	if k.v6 {
		return append(b, `",tcp_version="6"`...)
	}
	return append(b, `",tcp_version="4"`...)
}

// bucketBounds are the le values of the lifetime buckets, formatted once:
// a node's read writes a histogram for every series of every namespace.
var bucketBounds = func() (le [len(lifetimeBuckets) + 1]string) {
	for i, v := range lifetimeBuckets {
		le[i] = string(appendFloat(nil, v))
	}
	le[len(lifetimeBuckets)] = "+Inf"
	return le
}()

// appendHistogram writes the cumulative buckets, sum and count of h;
// labels are written without braces and may be empty.
func appendHistogram(b, labels []byte, h *histogram) []byte {
	var n uint64
	for i, c := range h.counts {
		n += c
		b = append(b, lifetimeName+"_bucket{"...)
		if len(labels) > 0 {
			b = append(b, labels...)
			b = append(b, ',')
		}
		b = append(b, `le="`...)
		b = append(b, bucketBounds[i]...)
		b = append(b, `"} `...)
		b = strconv.AppendUint(b, n, 10)
		b = append(b, '\n')
	}
	b = appendSampleStart(b, lifetimeName+"_sum", labels)
	b = appendFloat(b, h.sum)
	b = append(b, '\n')
	b = appendSampleStart(b, lifetimeName+"_count", labels)
	b = strconv.AppendUint(b, n, 10)
	return append(b, '\n')
}

// appendHeader writes the HELP and TYPE lines of a family.
func appendHeader(b []byte, name, help, typ string) []byte {
	b = append(b, "# HELP "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = appendEscaped(b, help, false)
	b = append(b, "\n# TYPE "...)
	b = append(b, name...)
	b = append(b, ' ')
	b = append(b, typ...)
	return append(b, '\n')
}

// appendSampleStart writes a sample's name and labels (without braces, may
// be empty) and the space before its value.
func appendSampleStart(b []byte, name string, labels []byte) []byte {
	b = append(b, name...)
	if len(labels) > 0 {
		b = append(b, '{')
		b = append(b, labels...)
		b = append(b, '}')
	}
	return append(b, ' ')
}

func appendIntSample(b []byte, name string, labels []byte, v int) []byte {
	b = appendSampleStart(b, name, labels)
	b = strconv.AppendInt(b, int64(v), 10)
	return append(b, '\n')
}

func appendFloatSample(b []byte, name string, labels []byte, v float64) []byte {
	b = appendSampleStart(b, name, labels)
	b = appendFloat(b, v)
	return append(b, '\n')
}

// appendLabel writes name="value" with the value escaped, preceded by a
// comma unless it is the first label.
func appendLabel(b []byte, name, value string) []byte {
	if len(b) > 0 {
		b = append(b, ',')
	}
	b = append(b, name...)
	b = append(b, `="`...)
	b = appendEscaped(b, value, true)
	return append(b, '"')
}

// appendEscaped escapes backslash and newline, and in label values also the
// double quote, as format 0.0.4 requires.
func appendEscaped(b []byte, s string, quote bool) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '\\':
			b = append(b, `\\`...)
		case c == '\n':
			b = append(b, `\n`...)
		case c == '"' && quote:
			b = append(b, `\"`...)
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendFloat writes v as Prometheus parsers read it.
func appendFloat(b []byte, v float64) []byte {
	switch {
	case math.IsInf(v, +1):
		return append(b, "+Inf"...)
	case math.IsInf(v, -1):
		return append(b, "-Inf"...)
	case math.IsNaN(v):
		return append(b, "NaN"...)
	}
	return strconv.AppendFloat(b, v, 'g', -1, 64)
}
