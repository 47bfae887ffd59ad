package benchmarks

import (
	"context"
	"os"
	"strings"
	"testing"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/stages"
)

// BenchmarkReplay replays the Mooncake conversation trace
// (pipelines/mooncake-conversation.hcl).
//
//   - metadata/unlimited: the whole trace (12,031 requests), keys and sizes
//     only, an unbounded host tier: the trace's ideal prefix hit ratio. Its
//     target is a replay under 5 seconds on 2 cores.
//   - full/host+ssd: the first 400 requests with real pages of a small model
//     (hidden 512, 4 heads, 1 KV head of 64, 2 layers: 128 KiB pages) through
//     a 64 MiB host tier and a write-through ssd tier, every loaded page
//     checked against its contents. Metrics: requests/s and the MB/s moved
//     to and from the ssd tier.
func BenchmarkReplay(b *testing.B) {
	src, err := os.ReadFile("../pipelines/mooncake-conversation.hcl")
	if err != nil {
		b.Fatal(err)
	}
	trace := "../pipelines/data/conversation_trace.jsonl"
	run := func(b *testing.B, text string, vars map[string]string) *stages.Report {
		f, diags := config.Load("mooncake-conversation.hcl", []byte(text), vars)
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		p, diags := stages.Build(f, stages.DefaultRegistry())
		if diags.HasErrors() {
			b.Fatal(diags)
		}
		rep, err := p.Run(context.Background(), stages.RunOptions{})
		if err != nil {
			b.Fatal(err)
		}
		return rep
	}
	b.Run("metadata/unlimited", func(b *testing.B) {
		var rep *stages.Report
		for b.Loop() {
			rep = run(b, string(src), map[string]string{"trace": trace})
		}
		b.ReportMetric(rep.PrefixHitRatio, "hit-ratio")
		b.ReportMetric(rep.RequestsPerSecond, "requests/s")
		b.ReportMetric(float64(rep.Requests), "requests")
	})
	b.Run("full/host+ssd", func(b *testing.B) {
		small := strings.Replace(string(src), `preset = "qwen3-vl-8b"`, `hidden_size   = 512
  heads         = 4
  kv_heads      = 1
  head_dim      = 64
  layers        = 2
  mrope_section = [16, 8, 8]`, 1)
		small = strings.Replace(small, `max_active    = 16`, "max_active    = 16\n  limit         = 400", 1)
		var rep *stages.Report
		var moved, secs float64
		for b.Loop() {
			dir := b.TempDir()
			rep = run(b, small, map[string]string{"trace": trace, "payload": "full", "host_capacity": "64MiB",
				"ssd_capacity": "8GiB", "ssd_path": dir})
			ssd := rep.Tiers[1]
			moved += float64(ssd.BytesRead + ssd.BytesWritten)
			secs += rep.DurationSeconds
		}
		b.ReportMetric(rep.PrefixHitRatio, "hit-ratio")
		b.ReportMetric(rep.RequestsPerSecond, "requests/s")
		b.ReportMetric(moved/secs/1e6, "ssd-MB/s")
		b.ReportMetric(float64(rep.VerifiedPages), "verified-pages")
	})
}
