package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata")

// golden compares got with the golden file at path, or rewrites it under
// -update.
func golden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs (run go test -update if the change is meant):\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

const sweepPipeline = "testdata/sweep/tiny.hcl"

var pngSignature = []byte("\x89PNG\r\n\x1a\n")

func readCSV(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return rows
}

func checkPNG(t *testing.T, path string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, pngSignature) {
		t.Fatalf("%s is not a PNG: starts %q", path, b[:min(len(b), 8)])
	}
}

// TestSweepHostCapacity sweeps the host tier's capacity of a tiny pipeline
// into the default directory: the CSV's header is the golden one, it has a
// row per value in order, and the hit ratio grows with the capacity.
func TestSweepHostCapacity(t *testing.T) {
	pipeline, err := filepath.Abs(sweepPipeline)
	if err != nil {
		t.Fatal(err)
	}
	header, err := filepath.Abs("testdata/sweep/header.golden")
	if err != nil {
		t.Fatal(err)
	}
	t.Chdir(t.TempDir()) // the default directory is relative to it
	values := []string{"4KiB", "64KiB", "1MiB"}
	code, out, stderr := flow(t, "run", pipeline, "--sweep", "host_capacity="+strings.Join(values, ","), "--log-level", "warn")
	if code != exitOK {
		t.Fatalf("sweep: exit %d\n%s%s", code, out, stderr)
	}
	dir := "sweep-host_capacity"
	rows := readCSV(t, filepath.Join(dir, sweepCSV))
	golden(t, header, strings.Join(rows[0], ",")+"\n")
	if len(rows) != 1+len(values) {
		t.Fatalf("%d rows, want a header and %d", len(rows), len(values))
	}
	col := func(name string) int {
		i := slices.Index(rows[0], name)
		if i < 0 {
			t.Fatalf("no column %q", name)
		}
		return i
	}
	prev := -1.0
	for i, row := range rows[1:] {
		if len(row) != len(sweepHeader) || row[col("value")] != values[i] {
			t.Fatalf("row %d: %q", i, row)
		}
		if n, err := strconv.ParseInt(row[col("bytes")], 10, 64); err != nil || n != []int64{4 << 10, 64 << 10, 1 << 20}[i] {
			t.Errorf("row %d: bytes %q", i, row[col("bytes")])
		}
		ratio, err := strconv.ParseFloat(row[col("prefix_hit_ratio")], 64)
		if err != nil || ratio < 0 || ratio > 1 {
			t.Fatalf("row %d: prefix_hit_ratio %q", i, row[col("prefix_hit_ratio")])
		}
		// LRU over a fixed workload: more room never loses a prefix
		// (measured 0.171, 0.683, 0.683).
		if ratio < prev {
			t.Errorf("prefix hit ratio falls from %.3f to %.3f at %s", prev, ratio, values[i])
		}
		prev = ratio
		for _, c := range []string{"requests", "prompt_tokens", "host_hit_pages", "late_loads"} {
			if _, err := strconv.ParseUint(row[col(c)], 10, 64); err != nil {
				t.Errorf("row %d: %s %q", i, c, row[col(c)])
			}
		}
		for _, c := range []string{"requests_per_second", "stall_seconds", "p50_stall_ms", "p99_stall_ms", "duration_seconds"} {
			if _, err := strconv.ParseFloat(row[col(c)], 64); err != nil {
				t.Errorf("row %d: %s %q", i, c, row[col(c)])
			}
		}
	}
	if prev == 0 {
		t.Error("no prefix hit at 1MiB: the workload shares no prefix")
	}
	checkPNG(t, filepath.Join(dir, sweepHitPlot))
	checkPNG(t, filepath.Join(dir, sweepStallCDF))
	for _, v := range values {
		if !strings.Contains(out, v) {
			t.Errorf("table lacks %s:\n%s", v, out)
		}
	}
}

// TestSweepCategories sweeps a count, in the order given. Its values are bare
// numbers: bytes holds them (config.ParseSize reads a bare number as bytes),
// but the plot takes them as categories, not sizes.
func TestSweepCategories(t *testing.T) {
	dir := t.TempDir()
	code, out, stderr := flow(t, "run", sweepPipeline, "--sweep", "sessions=2,1", "--sweep-out", dir, "--log-level", "warn")
	if code != exitOK {
		t.Fatalf("sweep: exit %d\n%s%s", code, out, stderr)
	}
	rows := readCSV(t, filepath.Join(dir, sweepCSV))
	if len(rows) != 3 || rows[1][0] != "2" || rows[2][0] != "1" || rows[1][1] != "2" || rows[1][2] != "6" || rows[2][2] != "3" {
		t.Fatalf("rows %q: want sessions 2 then 1, with 6 and 3 requests", rows)
	}
	checkPNG(t, filepath.Join(dir, sweepHitPlot))
	checkPNG(t, filepath.Join(dir, sweepStallCDF))
}

func TestSweepUsage(t *testing.T) {
	out := t.TempDir()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--sweep", "colour=red,blue"}, `declares no variable "colour" (declared: host_capacity, sessions)`},
		{[]string{"--sweep", "host_capacity"}, "NAME=V1,V2"},
		{[]string{"--sweep", "host_capacity="}, "NAME=V1,V2"},
		{[]string{"--sweep", "=4KiB"}, "NAME=V1,V2"},
		{[]string{"--sweep", "host_capacity=4KiB,,8KiB"}, "empty value"},
		{[]string{"--sweep", "host_capacity=4KiB,4KiB"}, "twice"},
		{[]string{"--sweep", "host_capacity=4KiB", "--sweep", "sessions=1"}, "one sweep"},
		{[]string{"--sweep", "host_capacity=4KiB", "--var", "host_capacity=8KiB"}, "one way"},
		{[]string{"--sweep", "host_capacity=4KiB", "--json", filepath.Join(out, "r.json")}, "--json and --sweep"},
		{[]string{"--sweep-out", out}, "needs --sweep"},
		// A value that makes the file invalid is found before any run.
		{[]string{"--sweep", "host_capacity=4KiB,512B"}, "--sweep host_capacity=512B: invalid pipeline"},
		{[]string{"--sweep", "sessions=1,many"}, "--sweep sessions=many: invalid pipeline"},
		{[]string{"--sweep", "host_capacity=4KiB", "--sweep-out", filepath.Join(sweepPipeline, "x")}, "--sweep-out"},
	} {
		args := append([]string{"run", sweepPipeline, "--log-level", "warn"}, tc.args...)
		if !slices.Contains(args, "--sweep-out") {
			args = append(args, "--sweep-out", filepath.Join(out, "o"))
		}
		code, stdout, stderr := flow(t, args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) || stdout != "" {
			t.Errorf("flow %v: exit %d, stdout %q, stderr %q; want exit 2 and %q", tc.args, code, stdout, stderr, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(out, "o", sweepCSV)); err == nil {
		t.Error("a sweep refused before running wrote its CSV")
	}
}

// cancelOn is a stderr that cancels the run's context once it has seen a
// line, so a test can interrupt a sweep at a known point.
type cancelOn struct {
	mu     sync.Mutex
	buf    bytes.Buffer
	marker string
	cancel context.CancelFunc
}

func (c *cancelOn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if bytes.Contains(p, []byte(c.marker)) {
		c.cancel()
	}
	return c.buf.Write(p)
}

// TestSweepInterrupted stops a sweep after its first run, as Ctrl-C does:
// exit 1, and the outputs hold that run.
func TestSweepInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	stderr := &cancelOn{marker: "sweep run done", cancel: cancel}
	dir := t.TempDir()
	var stdout bytes.Buffer
	code := Main(ctx, []string{"run", sweepPipeline, "--sweep", "host_capacity=4KiB,64KiB,1MiB", "--sweep-out", dir, "--log-level", "info",
		"--progress", "0"}, &stdout, stderr)
	if code != exitFailed {
		t.Fatalf("interrupted sweep: exit %d\n%s%s", code, stdout.String(), stderr.buf.String())
	}
	if !strings.Contains(stderr.buf.String(), "host_capacity=64KiB: interrupted") {
		t.Errorf("stderr does not name the run interrupted:\n%s", stderr.buf.String())
	}
	if rows := readCSV(t, filepath.Join(dir, sweepCSV)); len(rows) != 2 || rows[1][0] != "4KiB" {
		t.Fatalf("rows %q: want the header and the 4KiB run", rows)
	}
	checkPNG(t, filepath.Join(dir, sweepHitPlot))
	checkPNG(t, filepath.Join(dir, sweepStallCDF))
	if !strings.Contains(stdout.String(), "1 of 3 runs") {
		t.Errorf("table:\n%s", stdout.String())
	}
}

func TestQuantileAndCDF(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if q := quantile(s, 0.5); q != 5 {
		t.Errorf("p50 %v", q)
	}
	if q := quantile(s, 0.99); q != 10 {
		t.Errorf("p99 %v", q)
	}
	if q := quantile(s[:1], 0.5); q != 1 {
		t.Errorf("p50 of one %v", q)
	}
	pts := cdfPoints(s, 4)
	if len(pts) != 5 || pts[0].Y != 0 || pts[len(pts)-1].X != 10 || pts[len(pts)-1].Y != 1 {
		t.Fatalf("cdf %v", pts)
	}
	for i := 1; i < len(pts); i++ {
		if pts[i].X < pts[i-1].X || pts[i].Y <= pts[i-1].Y {
			t.Fatalf("cdf not increasing: %v", pts)
		}
	}
}

// TestReportKeys pins the JSON report's schema: its version and the keys at
// the top level and under prefetch, lookup and tiers[0]. A change here needs
// the README's table, and a schema_version bump if a key was renamed or
// removed; then rerun with -update.
func TestReportKeys(t *testing.T) {
	js := filepath.Join(t.TempDir(), "report.json")
	code, _, stderr := flow(t, "run", "testdata/tiny.hcl", "--json", js, "--log-level", "warn")
	if code != exitOK {
		t.Fatalf("run: exit %d\n%s", code, stderr)
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var r map[string]any
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "schema_version %v\n", r["schema_version"])
	keys := func(prefix string, m any) {
		obj, ok := m.(map[string]any)
		if !ok {
			t.Fatalf("%s is not an object: %v", prefix, m)
		}
		var ks []string
		for k := range obj {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		for _, k := range ks {
			fmt.Fprintf(&sb, "%s%s\n", prefix, k)
		}
	}
	keys("", r)
	keys("prefetch.", r["prefetch"])
	keys("lookup.", r["lookup"])
	keys("attention.", r["attention"])
	tiers, ok := r["tiers"].([]any)
	if !ok || len(tiers) == 0 {
		t.Fatalf("tiers: %v", r["tiers"])
	}
	keys("tiers[0].", tiers[0])
	golden(t, "testdata/report_keys.golden", sb.String())
}

// TestSweepInterruptedBeforeRunning: a sweep cancelled before its first run
// leaves the CSV header and no plots, not those of an earlier sweep.
func TestSweepInterruptedBeforeRunning(t *testing.T) {
	dir := t.TempDir()
	for _, f := range []string{sweepHitPlot, sweepStallCDF} {
		if err := os.WriteFile(filepath.Join(dir, f), pngSignature, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var stdout, stderr bytes.Buffer
	code := Main(ctx, []string{"run", sweepPipeline, "--sweep", "host_capacity=4KiB", "--sweep-out", dir}, &stdout, &stderr)
	if code != exitFailed || !strings.Contains(stderr.String(), "host_capacity=4KiB: interrupted") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
	if rows := readCSV(t, filepath.Join(dir, sweepCSV)); len(rows) != 1 {
		t.Fatalf("rows %q: want the header only", rows)
	}
	for _, f := range []string{sweepHitPlot, sweepStallCDF} {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			t.Errorf("%s of an earlier sweep is still there", f)
		}
	}
}
