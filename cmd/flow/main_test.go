package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func flow(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var o, e bytes.Buffer
	code = Main(context.Background(), args, &o, &e)
	return code, o.String(), e.String()
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"frobnicate"}, {"run"}, {"run", "a.hcl", "b.hcl"}, {"validate"},
		{"verify"}, {"run", "testdata/tiny.hcl", "--var", "novalue"}, {"run", "testdata/tiny.hcl", "--bogus"},
		{"run", "testdata/tiny.hcl", "--log-level", "loud"}, {"verify", "--dtype", "int3", "x"},
		{"run", "testdata/tiny.hcl", "--progress", "1ns"}, {"run", "testdata/tiny.hcl", "--json", "/"},
		{"verify", "--block-tokens", "100000000", "x"}, {"verify", "--tolerance", "NaN", "x"}, {"verify", "--tolerance", "-1", "x"}, {"verify", "--threads", "0", "x"}} {
		if code, _, stderr := flow(t, args...); code != exitUsage || stderr == "" {
			t.Errorf("flow %v: exit %d, stderr %q; want exit 2 with a message", args, code, stderr)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := flow(t, "version")
	if code != 0 || !strings.HasPrefix(out, "flow ") || !strings.Contains(out, "go1.") {
		t.Fatalf("version: %d %q", code, out)
	}
}

var located = regexp.MustCompile(`^[^:]+\.hcl:\d+:\d+: error: `)

func TestValidate(t *testing.T) {
	code, out, _ := flow(t, "validate", "testdata/tiny.hcl")
	if code != 0 || !strings.Contains(out, "ok") {
		t.Fatalf("validate tiny: %d %q", code, out)
	}
	code, _, stderr := flow(t, "validate", "testdata/bad.hcl")
	if code != exitUsage || !strings.HasPrefix(stderr, "testdata/bad.hcl:6:14: error: Invalid sessions") {
		t.Fatalf("validate bad: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = flow(t, "validate", "testdata/missing.hcl")
	if code != exitUsage || !located.MatchString(stderr) || strings.Count(stderr, "\n") != 1 {
		t.Fatalf("missing file: exit %d, stderr %q; want one located line", code, stderr)
	}
	code, _, stderr = flow(t, "validate", "testdata/tiny.hcl", "--var", "colour=red")
	if code != exitUsage || !strings.Contains(stderr, "Undeclared variable") {
		t.Fatalf("undeclared var: exit %d, stderr %q", code, stderr)
	}
}

func TestRunWritesReport(t *testing.T) {
	js := filepath.Join(t.TempDir(), "report.json")
	code, out, stderr := flow(t, "run", "testdata/tiny.hcl", "--var", "sessions=3", "--json", js, "--log-level", "warn")
	if code != 0 {
		t.Fatalf("run: exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"stage", "attend", "prefix hit ratio", "tokens/s", "wall time", "host"} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
	b, err := os.ReadFile(js)
	if err != nil {
		t.Fatal(err)
	}
	var r struct {
		SchemaVersion   *int     `json:"schema_version"`
		DurationSeconds *float64 `json:"duration_seconds"`
		Requests        *int     `json:"requests"`
		Tokens          struct {
			Prompt *int `json:"prompt"`
			Cached *int `json:"cached"`
		} `json:"tokens"`
		PrefixHitRatio *float64 `json:"prefix_hit_ratio"`
		Stages         []struct {
			Name    *string  `json:"name"`
			Workers *int     `json:"workers"`
			Items   *int     `json:"items"`
			Errors  *int     `json:"errors"`
			P50     *float64 `json:"p50_ms"`
			P99     *float64 `json:"p99_ms"`
		} `json:"stages"`
		Tiers []struct {
			Name         *string `json:"name"`
			Capacity     *int64  `json:"capacity_bytes"`
			Used         *int64  `json:"used_bytes"`
			Hits         *int64  `json:"hits"`
			Misses       *int64  `json:"misses"`
			BytesRead    *int64  `json:"bytes_read"`
			BytesWritten *int64  `json:"bytes_written"`
			Evictions    *int64  `json:"evictions"`
		} `json:"tiers"`
	}
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatal(err)
	}
	if r.SchemaVersion == nil || *r.SchemaVersion != 1 || r.DurationSeconds == nil || r.Requests == nil || *r.Requests != 6 ||
		r.Tokens.Prompt == nil || r.Tokens.Cached == nil || r.PrefixHitRatio == nil || len(r.Stages) != 7 || len(r.Tiers) != 1 {
		t.Fatalf("JSON report misses required keys:\n%s", b)
	}
	for _, s := range r.Stages {
		if s.Name == nil || s.Workers == nil || s.Items == nil || s.Errors == nil || s.P50 == nil || s.P99 == nil {
			t.Fatalf("stage entry misses keys:\n%s", b)
		}
	}
	tr := r.Tiers[0]
	if tr.Name == nil || *tr.Name != "host" || tr.Capacity == nil || *tr.Capacity != 8<<20 || tr.Used == nil || tr.Hits == nil ||
		tr.Misses == nil || tr.BytesRead == nil || tr.BytesWritten == nil || tr.Evictions == nil {
		t.Fatalf("tier entry misses keys:\n%s", b)
	}
	if want := float64(*r.Tokens.Cached) / float64(*r.Tokens.Prompt); *r.PrefixHitRatio != want || want == 0 {
		t.Fatalf("prefix_hit_ratio %v, want cached/prompt = %v", *r.PrefixHitRatio, want)
	}
}

func TestRunBadJSONPath(t *testing.T) {
	code, out, stderr := flow(t, "run", "testdata/tiny.hcl", "--json", filepath.Join(t.TempDir(), "no", "such", "dir.json"), "--log-level", "error")
	if code != exitUsage || !strings.Contains(stderr, "--json") || out != "" {
		t.Fatalf("unwritable --json: exit %d, stdout %q, stderr %q; want exit 2 before running", code, out, stderr)
	}
}

func TestVerifyFixtures(t *testing.T) {
	fixtures, _ := filepath.Glob("../../model/testdata/qwen3vl_attn_*.safetensors")
	if len(fixtures) != 2 {
		t.Fatalf("fixtures: %v", fixtures)
	}
	code, out, stderr := flow(t, append([]string{"verify"}, fixtures...)...)
	if code != 0 || strings.Count(out, ": ok  dense") != 2 || strings.Count(out, ": ok  block_sparse") != 2 {
		t.Fatalf("verify: exit %d\n%s%s", code, out, stderr)
	}
	for _, args := range [][]string{{"--threads", "3"}, {"--dtype", "bf16", "--block-tokens", "7", "--tolerance", "1e-2"}} {
		code, out, stderr = flow(t, append(append([]string{"verify"}, args...), fixtures...)...)
		if code != 0 || strings.Count(out, ": ok  block_sparse") != 2 || strings.Contains(out, "FAIL") {
			t.Fatalf("verify %v: exit %d\n%s%s", args, code, out, stderr)
		}
	}
	// A tolerance no float32 computation meets must fail with exit 1.
	code, out, _ = flow(t, "verify", "--tolerance", "1e-12", fixtures[0])
	if code != exitFailed || !strings.Contains(out, "FAIL") {
		t.Fatalf("verify at 1e-12: exit %d\n%s", code, out)
	}
}

func TestVerifyBadFixture(t *testing.T) {
	bad := filepath.Join(t.TempDir(), "bad.safetensors")
	if err := os.WriteFile(bad, []byte("\x10\x00\x00\x00\x00\x00\x00\x00{not json}"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{bad, filepath.Join(t.TempDir(), "missing.safetensors")} {
		code, _, stderr := flow(t, "verify", path)
		if code != exitUsage || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, filepath.Base(path)) {
			t.Errorf("verify %s: exit %d, stderr %q; want exit 2 and one line naming the file", path, code, stderr)
		}
	}
}
