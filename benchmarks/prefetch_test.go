package benchmarks

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/stages"
)

// BenchmarkPrefetch runs pipelines/qwen3-vl-chat-ssd.hcl over an ssd tier
// that a first, untimed run filled: the host tier holds 16 pages, so nearly
// every page a request reuses is loaded from the ssd tier. It compares the
// prefetch stage ("on") with its baseline, the same chain without it ("off"),
// where attend loads each page on demand and waits for it. "warm" runs with
// the ssd tier's files in the OS page cache (a load is a copy from memory),
// "cold" drops them from it before each run (a load reads the disk).
// Metrics: attend's total stall per run, the loads that were late, and the
// tokens served per second (prompt and decode tokens over wall time).
func BenchmarkPrefetch(b *testing.B) {
	src, err := os.ReadFile("../pipelines/qwen3-vl-chat-ssd.hcl")
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	vars := map[string]string{"sessions": "16", "turns": "2", "ssd_path": dir}
	build := func(b *testing.B, text string) *stages.Plan {
		f, diags := config.Load("qwen3-vl-chat-ssd.hcl", []byte(text), vars)
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		p, diags := stages.Build(f, stages.DefaultRegistry())
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		return p
	}
	// Fill the ssd tier once, and let the kernel write it back before
	// anything is timed.
	if _, err := build(b, string(src)).Run(context.Background(), stages.RunOptions{}); err != nil {
		b.Fatal(err)
	}
	if err := syncDir(dir, false); err != nil {
		b.Fatal(err)
	}
	off := strings.Replace(string(src), `stages = ["fetch", "prefetch", "align", "attend", "evict"]`, `stages = ["fetch", "align", "attend", "evict"]`, 1)
	off = strings.Replace(off, "stage \"prefetch\" {\n  workers   = 4\n  lookahead = 1\n}\n", "", 1)
	if off == string(src) {
		b.Fatal("could not remove the prefetch stage from the pipeline")
	}
	for _, c := range []struct {
		name, text string
		cold       bool
	}{{"off/warm", off, false}, {"on/warm", string(src), false}, {"off/cold", off, true}, {"on/cold", string(src), true}} {
		b.Run(c.name, func(b *testing.B) {
			p := build(b, c.text)
			var stall, late, served, secs, loads float64
			for b.Loop() {
				if c.cold {
					b.StopTimer()
					if err := syncDir(dir, true); err != nil {
						b.Fatal(err)
					}
					b.StartTimer()
				}
				rep, err := p.Run(context.Background(), stages.RunOptions{})
				if err != nil {
					b.Fatal(err)
				}
				stall += rep.Prefetch.StallSeconds
				late += float64(rep.Prefetch.Late)
				loads += float64(rep.Prefetch.OnTime + rep.Prefetch.Late)
				served += float64(rep.Tokens.Prompt + rep.Tokens.Decode)
				secs += rep.DurationSeconds
			}
			n := float64(b.N)
			b.ReportMetric(1000*stall/n, "stall-ms/op")
			b.ReportMetric(late/n, "late/op")
			b.ReportMetric(loads/n, "loads/op")
			b.ReportMetric(served/secs, "served-tokens/s")
		})
	}
}

// syncDir writes back the files in dir and, if drop is set, drops them from
// the OS page cache (the ssd tier is closed between runs, so none is
// mapped).
func syncDir(dir string, drop bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		f, err := os.Open(filepath.Join(dir, e.Name()))
		if err != nil {
			return err
		}
		fd := int(f.Fd())
		err = unix.Fdatasync(fd)
		if drop {
			err = errors.Join(err, unix.Fadvise(fd, 0, 0, unix.FADV_DONTNEED))
		}
		err = errors.Join(err, f.Close())
		if err != nil {
			return err
		}
	}
	return nil
}
