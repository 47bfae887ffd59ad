package pipeline_test

import (
	"context"
	"strconv"
	"testing"

	"github.com/kvflow/kvflow/pipeline"
)

// BenchmarkChain5 measures the engine's per-item overhead: b.N items of 64 keys through five
// no-op stages with default options.
func BenchmarkChain5(b *testing.B) {
	keys := make([]string, 64)
	for i := range keys {
		keys[i] = strconv.Itoa(i)
	}
	nop := pipeline.StageFunc("nop", func(_ context.Context, v int) (int, error) { return v, nil })
	p := pipeline.New()
	n := pipeline.Source(p, "src", func(v int) string { return keys[v%len(keys)] }, func(_ context.Context, emit func(int) error) error {
		for i := range b.N {
			if err := emit(i); err != nil {
				return err
			}
		}
		return nil
	})
	for range 5 {
		n = pipeline.Then(n, nop, pipeline.Options{})
	}
	var got int
	pipeline.Sink(n, "sink", func(context.Context, int) error { got++; return nil })
	b.ReportAllocs()
	b.ResetTimer()
	if err := p.Run(context.Background()); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	if got != b.N {
		b.Fatalf("sink got %d items, want %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}
