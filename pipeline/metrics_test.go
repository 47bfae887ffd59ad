package pipeline_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kvflow/kvflow/pipeline"
)

func TestMetricsCounts(t *testing.T) {
	const keys, per = 3, 100
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(keys, per))
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{Workers: 2})
	n = pipeline.Then(n, pipeline.StageFunc("sleep", func(_ context.Context, it item) (item, error) {
		if it.seq < 10 && it.key == "k0" {
			time.Sleep(time.Millisecond)
		}
		return it, nil
	}), pipeline.Options{Workers: 3})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })

	names := []string{"src", "a", "sleep", "sink"}
	for i, m := range p.Metrics() {
		if m.Name != names[i] {
			t.Errorf("node %d is %q, want %q", i, m.Name, names[i])
		}
	}
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	ms := p.Metrics()
	for _, m := range ms {
		if m.Items != keys*per || m.Errors != 0 {
			t.Errorf("%s: items %d errors %d, want %d and 0", m.Name, m.Items, m.Errors, keys*per)
		}
	}
	for _, m := range ms[1:] {
		if !(m.P50 <= m.P99 && m.P99 <= m.Max && m.Max <= m.Busy) {
			t.Errorf("%s: want p50 %v <= p99 %v <= max %v <= busy %v", m.Name, m.P50, m.P99, m.Max, m.Busy)
		}
	}
	// Ten calls slept at least 1ms each: lower bounds only, so a slow machine cannot break them.
	if s := ms[2]; s.Busy < 10*time.Millisecond || s.Max < time.Millisecond || s.P99 < 980*time.Microsecond {
		t.Errorf("sleep: busy %v max %v p99 %v, want >= 10ms, 1ms, ~1ms", s.Busy, s.Max, s.P99)
	}
}

// TestMetricsQueueWait holds the first item in Process until the others have been accepted, so
// they must wait in the queue.
func TestMetricsQueueWait(t *testing.T) {
	const total = 5
	accepted := make(chan struct{})
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(_ context.Context, emit func(item) error) error {
		defer close(accepted)
		for s := range total {
			if err := emit(item{key: "k", seq: s}); err != nil {
				return err
			}
		}
		return nil
	})
	first := true
	n = pipeline.Then(n, pipeline.StageFunc("slow", func(_ context.Context, it item) (item, error) {
		if first {
			first = false
			<-accepted // emit returned for every item: the rest sit in the queue (or the hop)
		}
		return it, nil
	}), pipeline.Options{Workers: 1, Queue: total})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if m := p.Metrics()[1]; m.QueueWait <= 0 || m.Items != total {
		t.Errorf("slow: queue wait %v items %d, want > 0 and %d", m.QueueWait, m.Items, total)
	}
}

// TestMetricsErrorsExact: with one worker the failing item is processed after exactly the items
// emitted before it, and it is the only error.
func TestMetricsErrorsExact(t *testing.T) {
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Then(n, pipeline.StageFunc("fail", func(_ context.Context, it item) (item, error) {
		if it.key == "k3" && it.seq == 4 { // the 44th item
			return it, errBoom
		}
		return it, nil
	}), pipeline.Options{Workers: 1})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	if err := p.Run(context.Background()); !errors.Is(err, errBoom) {
		t.Fatalf("Run = %v, want errBoom", err)
	}
	if m := p.Metrics()[1]; m.Items != 43 || m.Errors != 1 {
		t.Errorf("fail: items %d errors %d, want 43 and 1", m.Items, m.Errors)
	}
}

// TestMetricsDuringRun reads metrics from another goroutine while items flow (for -race).
func TestMetricsDuringRun(t *testing.T) {
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(4, 500))
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{Workers: 2})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	stop := make(chan struct{})
	polled := make(chan uint64)
	go func() {
		var last uint64
		for {
			select {
			case <-stop:
				polled <- last
				return
			default:
			}
			m := p.Metrics()
			if m[2].Items < last {
				t.Error("sink items went backwards")
			}
			last = m[2].Items
		}
	}()
	err := p.Run(context.Background())
	close(stop)
	<-polled
	if err != nil {
		t.Fatal(err)
	}
}
