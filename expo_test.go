package main

import (
	"math"
	"testing"
)

func TestAppendConnMetricsGolden(t *testing.T) {
	var h histogram
	for _, v := range []float64{0.5, 1, 7, 90000} {
		h.observe(v)
	}
	series := []*series{
		{key: seriesKey{dirIn, 80, false}, longterm: 2, clients: 1, established: 3, lifetimes: h},
		{key: seriesKey{dirOut, 80, false}, longterm: 1, clients: 1, established: 1},
		{key: seriesKey{dirIn, 80, true}, longterm: 0, established: 1},
		{key: seriesKey{dirIn, 3838, false}},
	}
	tests := []struct {
		name string
		view connView
	}{
		{"labelled", connView{series: series[2:], total: &h}},
		{"direction", connView{withDir: true, series: series, total: &h}},
		{"simple", connView{simple: true, series: series, total: &h, clients: 1}},
		{"simple-empty", connView{simple: true, total: &histogram{}}},
		{"labelled-empty", connView{total: &histogram{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			golden(t, "testdata/expo/"+tt.name+".golden", appendConnMetrics(nil, tt.view))
		})
	}
}

func TestAppendEscaping(t *testing.T) {
	tests := []struct {
		name, value, want string
	}{
		{"plain", "v1.2.3", `a="v1.2.3"`},
		{"quote", `say "hi"`, `a="say \"hi\""`},
		{"backslash", `C:\dir`, `a="C:\\dir"`},
		{"newline", "two\nlines", `a="two\nlines"`},
		{"utf8", "größe", `a="größe"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := string(appendLabel(nil, "a", tt.value)); got != tt.want {
				t.Errorf("appendLabel(%q) = %s, want %s", tt.value, got, tt.want)
			}
		})
	}
	got := string(appendHeader(nil, "m", "a \"quoted\" back\\slash\nnewline", "gauge"))
	want := "# HELP m a \"quoted\" back\\\\slash\\nnewline\n# TYPE m gauge\n"
	if got != want {
		t.Errorf("appendHeader = %q, want %q", got, want)
	}
	if got := string(appendLabel([]byte(`a="1"`), "b", "2")); got != `a="1",b="2"` {
		t.Errorf("second label = %s", got)
	}
}

func TestAppendFloat(t *testing.T) {
	for v, want := range map[float64]string{
		0: "0", 1.5: "1.5", 86400: "86400", 1e21: "1e+21", 0.001: "0.001",
		math.Inf(1): "+Inf", math.Inf(-1): "-Inf", math.NaN(): "NaN",
	} {
		if got := string(appendFloat(nil, v)); got != want {
			t.Errorf("appendFloat(%v) = %s, want %s", v, got, want)
		}
	}
}

func BenchmarkAppendConnMetrics1000(b *testing.B) {
	s := make([]*series, 1000)
	for i := range s {
		s[i] = &series{key: seriesKey{dirIn, uint16(1000 + i/2), i%2 == 1}, longterm: i, established: 2 * i}
	}
	v := connView{series: s, total: &histogram{}}
	buf := appendConnMetrics(nil, v)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendConnMetrics(buf[:0], v)
	}
}
