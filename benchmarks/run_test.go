package benchmarks

import (
	"context"
	"testing"

	"github.com/kvflow/kvflow/config"
	"github.com/kvflow/kvflow/stages"
)

// BenchmarkMainJob runs the main job, pipelines/qwen3-vl-chat.hcl, with
// fewer sessions (the file's own variable) and reports tokens/s, the prefix
// hit ratio and the attend stage's share of the wall time. Its baseline is
// the same workload with prefix reuse impossible: a host tier of one page,
// so every prompt token is computed.
func BenchmarkMainJob(b *testing.B) {
	for _, c := range []struct{ name, capacity string }{{"cache", "256MiB"}, {"no-reuse", "256KiB"}} {
		b.Run(c.name, func(b *testing.B) {
			f, diags := config.LoadFile("../pipelines/qwen3-vl-chat.hcl",
				map[string]string{"sessions": "4", "turns": "2", "host_capacity": c.capacity})
			if diags.HasErrors() {
				b.Fatal(diags)
			}
			p, diags := stages.Build(f, stages.DefaultRegistry())
			if diags.HasErrors() {
				b.Fatal(diags)
			}
			var rep *stages.Report
			for b.Loop() {
				var err error
				rep, err = p.Run(context.Background(), stages.RunOptions{})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(rep.TokensPerSecond, "tokens/s")
			b.ReportMetric(rep.PrefixHitRatio, "hit-ratio")
			b.ReportMetric(float64(rep.Tokens.Prompt+rep.Tokens.Decode)/rep.DurationSeconds, "served-tokens/s")
		})
	}
}
