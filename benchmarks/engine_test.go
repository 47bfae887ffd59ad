package benchmarks

import (
	"context"
	"strconv"
	"testing"

	"github.com/reugn/go-streams/extension"
	"github.com/reugn/go-streams/flow"

	"github.com/kvflow/kvflow/pipeline"
)

// BenchmarkChain measures the per-item cost of the engine: b.N items of 64
// keys through five no-op stages. The baseline is the same chain built from
// go-streams' own Map operators with parallelism 1 (the only setting in which
// go-streams keeps order), which has no per-key ordering across workers, no
// errors, no cancellation and no metrics.
func BenchmarkChain(b *testing.B) {
	b.Run("kvflow/workers=1", func(b *testing.B) { kvflowChain(b, 1) })
	b.Run("kvflow/workers=2", func(b *testing.B) { kvflowChain(b, 2) })
	b.Run("go-streams/parallelism=1", goStreamsChain)
}

func kvflowChain(b *testing.B, workers int) {
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
		n = pipeline.Then(n, nop, pipeline.Options{Workers: workers})
	}
	got := 0
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

func goStreamsChain(b *testing.B) {
	in := make(chan any)
	out := make(chan any)
	src := extension.NewChanSource(in)
	var f = src.Via(flow.NewMap(func(v int) int { return v }, 1))
	for range 4 {
		f = f.Via(flow.NewMap(func(v int) int { return v }, 1))
	}
	go f.To(extension.NewChanSink(out))
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for i := range b.N {
			in <- i
		}
		close(in)
	}()
	got := 0
	for range out {
		got++
		if got == b.N {
			break
		}
	}
	b.StopTimer()
	if got != b.N {
		b.Fatalf("sink got %d items, want %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "items/s")
}
