package pipeline_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kvflow/kvflow/pipeline"
	"github.com/reugn/go-streams"
	"github.com/reugn/go-streams/flow"
	"go.uber.org/goleak"
)

// ints emits 0..n-1.
func ints(n int) func(context.Context, func(int) error) error {
	return func(_ context.Context, emit func(int) error) error {
		for v := range n {
			if err := emit(v); err != nil {
				return err
			}
		}
		return nil
	}
}

func mod4(v int) string { return fmt.Sprintf("k%d", v%4) }

// TestViaChain runs Source → Then → Via(Filter) → Via(Map) → Then → Sink and checks the exact
// output of every key, in order, and the Via nodes' metrics.
func TestViaChain(t *testing.T) {
	defer goleak.VerifyNone(t)
	const total = 400
	p := pipeline.New()
	n := pipeline.Source(p, "src", mod4, ints(total))
	n = pipeline.Then(n, pipeline.StageFunc("inc", func(_ context.Context, v int) (int, error) { return v + 1, nil }),
		pipeline.Options{Workers: 4})
	n = pipeline.Via(n, "even", flow.NewFilter(func(v int) bool { return v%2 == 0 }, 1), mod4)
	n = pipeline.Via(n, "x10", flow.NewMap(func(v int) int { return v * 10 }, 1), func(v int) string { return mod4(v / 10) })
	n = pipeline.Then(n, pipeline.StageFunc("id", func(_ context.Context, v int) (int, error) { return v, nil }),
		pipeline.Options{Workers: 3})
	got := map[string][]int{}
	pipeline.Sink(n, "sink", func(_ context.Context, v int) error {
		k := mod4(v / 10)
		got[k] = append(got[k], v)
		return nil
	})
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}

	// "inc" gives 1..total, of which the even ones pass; per key (after inc) in increasing order.
	want := map[string][]int{}
	for v := 1; v <= total; v++ {
		if v%2 == 0 {
			want[mod4(v)] = append(want[mod4(v)], v*10)
		}
	}
	if len(got) != len(want) {
		t.Errorf("got keys %v, want %v", slices.Sorted(maps.Keys(got)), slices.Sorted(maps.Keys(want)))
	}
	for k, w := range want {
		if !slices.Equal(got[k], w) {
			t.Errorf("key %s: got %v, want %v", k, got[k], w)
		}
	}

	wantItems := map[string]uint64{"src": total, "inc": total, "even": total / 2, "x10": total / 2, "id": total / 2, "sink": total / 2}
	var names []string
	for _, m := range p.Metrics() {
		names = append(names, m.Name)
		if m.Items != wantItems[m.Name] || m.Errors != 0 {
			t.Errorf("%s: items %d errors %d, want %d and 0", m.Name, m.Items, m.Errors, wantItems[m.Name])
		}
		if m.Name == "even" || m.Name == "x10" {
			if m.Workers != 0 || m.Queue != 0 || m.Busy != 0 || m.Max != 0 {
				t.Errorf("%s: %+v, want zero workers, queue and durations", m.Name, m)
			}
		}
	}
	if want := []string{"src", "inc", "even", "x10", "id", "sink"}; !slices.Equal(names, want) {
		t.Errorf("metrics for %v, want %v", names, want)
	}
}

// TestViaKeepsPerKeyOrder puts a Via between stages with several workers and checks the
// ordering contract in the stage after it and in the sink.
func TestViaKeepsPerKeyOrder(t *testing.T) {
	const keys, per = 8, 200
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(keys, per))
	n = pipeline.Then(n, checked("a", newOrderCheck(), 20*time.Microsecond), pipeline.Options{Workers: 4})
	n = pipeline.Via(n, "pass", flow.NewMap(func(it item) item { return it }, 1), keyOf)
	after := newOrderCheck()
	n = pipeline.Then(n, checked("b", after, 20*time.Microsecond), pipeline.Options{Workers: 4})
	col := newCollector()
	pipeline.Sink(n, "sink", col.sink)
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	after.verify(t, "b")
	col.check.verify(t, "sink")
	if got := len(col.items()); got != keys*per {
		t.Errorf("sink got %d items, want %d", got, keys*per)
	}
}

func TestViaTypeMismatch(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	// The Map emits strings, but the node is declared to produce items.
	m := pipeline.Via(n, "wrong", flow.NewMap(func(it item) string { return it.String() }, 1), keyOf)
	pipeline.Sink(m, "sink", func(context.Context, item) error { return nil })
	err := p.Run(context.Background())
	se := asStageError(t, err)
	if se.Stage != "wrong" || !strings.Contains(err.Error(), "string") || !strings.Contains(err.Error(), "pipeline_test.item") {
		t.Errorf("Run = %v, want a StageError of node wrong naming both types", err)
	}
	if errors.Is(err, pipeline.ErrPanic) {
		t.Errorf("Run = %v, want a type error, not a panic", err)
	}
	if m := p.Metrics()[1]; m.Errors != 1 || m.Items != 0 {
		t.Errorf("wrong: items %d errors %d, want 0 and 1", m.Items, m.Errors)
	}
}

// TestViaNilIsAValidInterfaceOutput: a Flow may emit nil when the node's type is an interface.
func TestViaNilIsAValidInterfaceOutput(t *testing.T) {
	p := pipeline.New()
	n := pipeline.Source(p, "src", mod4, ints(6))
	e := pipeline.Via(n, "errs", flow.NewMap(func(v int) error {
		if v%2 == 0 {
			return nil
		}
		return fmt.Errorf("odd %d", v)
	}, 1), func(error) string { return "" })
	var got []string
	pipeline.Sink(e, "sink", func(_ context.Context, err error) error {
		got = append(got, fmt.Sprint(err))
		return nil
	})
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if want := []string{"<nil>", "odd 1", "<nil>", "odd 3", "<nil>", "odd 5"}; !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestViaKeyPanics(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Via(n, "rekey", flow.NewFilter(func(item) bool { return true }, 1), panicKey)
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	err := p.Run(context.Background())
	se := asStageError(t, err)
	var pe *pipeline.PanicError
	if se.Stage != "rekey" || se.Item != "k0#0" || !errors.As(err, &pe) || !strings.Contains(pe.Stack, "panicKey") {
		t.Errorf("Run = %v, want a panic in rekey's key for k0#0", err)
	}
}

// TestViaLaterStageFails fails a stage after the Via while items are held inside the go-streams
// Flow, and checks that Run returns that error and that no goroutine, of the engine or of
// go-streams, is left behind.
func TestViaLaterStageFails(t *testing.T) {
	defer goleak.VerifyNone(t)
	var (
		release = make(chan struct{}) // closed once the run is cancelled
		once    sync.Once
	)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Via(n, "odd", flow.NewFilter(func(it item) bool { return it.seq%2 == 1 }, 2), keyOf)
	n = pipeline.Via(n, "hold", flow.NewMap(func(it item) item {
		if it.key != "k0" || it.seq != 1 {
			<-release // held inside the Map until the run is cancelled
		}
		return it
	}, 3), keyOf)
	n = pipeline.Then(n, pipeline.StageFunc("fail", func(ctx context.Context, it item) (item, error) {
		once.Do(func() {
			go func() { <-ctx.Done(); close(release) }()
		})
		return it, errBoom
	}), pipeline.Options{Workers: 2})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	err := p.Run(context.Background())
	se := asStageError(t, err)
	if se.Stage != "fail" || se.Item != "k0#1" || !errors.Is(err, errBoom) {
		t.Errorf("Run = %v, want stage fail, item k0#1, wrapping errBoom", err)
	}
}

// TestViaCallerCancel cancels the run from the sink while the Via's Flow holds items.
func TestViaCallerCancel(t *testing.T) {
	defer goleak.VerifyNone(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, endless)
	n = pipeline.Via(n, "map", flow.NewMap(func(it item) item { return it }, 4), keyOf)
	pipeline.Sink(n, "sink", func(context.Context, item) error { cancel(); return nil })
	if err := p.Run(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Run = %v, want context.Canceled", err)
	}
}

// TestViaThrottler uses a go-streams operator that works in its To (and has a goroutine that
// ends only then): the items pass, and no goroutine is left.
func TestViaThrottler(t *testing.T) {
	defer goleak.VerifyNone(t)
	const total = 50
	p := pipeline.New()
	n := pipeline.Source(p, "src", mod4, ints(total))
	n = pipeline.Via(n, "throttle", flow.NewThrottler(1000, time.Millisecond, 8, flow.Backpressure), mod4)
	var got []int
	pipeline.Sink(n, "sink", func(_ context.Context, v int) error { got = append(got, v); return nil })
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(got) != total || !slices.IsSorted(got) {
		t.Errorf("got %v, want 0..%d in order", got, total-1)
	}
}

func TestViaRunTwice(t *testing.T) {
	defer goleak.VerifyNone(t)
	p := pipeline.New()
	n := pipeline.Via(pipeline.Source(p, "src", mod4, ints(10)), "f", flow.NewFilter(func(int) bool { return true }, 1), mod4)
	pipeline.Sink(n, "sink", func(context.Context, int) error { return nil })
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); !errors.Is(err, pipeline.ErrAlreadyRun) {
		t.Errorf("second Run = %v, want ErrAlreadyRun", err)
	}
	// Added after Run: a build error, and the Flow is released at once.
	pipeline.Via(n, "late", flow.NewThrottler(1, time.Hour, 1, flow.Backpressure), mod4)
	if err := p.Run(context.Background()); !errors.Is(err, pipeline.ErrAlreadyRun) {
		t.Errorf("third Run = %v, want ErrAlreadyRun", err)
	}
}

// TestViaInvalidGraph checks Via's build errors, and that the go-streams Flows of a graph that
// cannot run are ended (goleak): the rejected one at once, the accepted ones by Run.
func TestViaInvalidGraph(t *testing.T) {
	defer goleak.VerifyNone(t)
	nop := func(context.Context, int) error { return nil }
	pass := func() streams.Flow { return flow.NewFilter(func(int) bool { return true }, 2) }
	for name, build := range map[string]func(p *pipeline.Pipeline){
		"nil flow": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", mod4, ints(1))
			pipeline.Sink(pipeline.Via[int, int](n, "v", nil, mod4), "sink", nop)
		},
		"typed nil flow": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", mod4, ints(1))
			pipeline.Sink(pipeline.Via[int, int](n, "v", (*flow.Filter[int])(nil), mod4), "sink", nop)
		},
		"nil key": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", mod4, ints(1))
			pipeline.Sink(pipeline.Via[int, int](n, "v", pass(), nil), "sink", nop)
		},
		"branch": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", mod4, ints(1))
			pipeline.Sink(pipeline.Via(n, "v1", pass(), mod4), "sink", nop)
			pipeline.Via(n, "v2", flow.NewThrottler(1, time.Hour, 1, flow.Backpressure), mod4)
		},
		"after sink": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", mod4, ints(1))
			pipeline.Sink(n, "sink", nop)
			pipeline.Via(n, "v", pass(), mod4)
		},
		"error after a via": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", mod4, ints(1))
			n = pipeline.Via(n, "v", flow.NewThrottler(1, time.Hour, 1, flow.Backpressure), mod4)
			n = pipeline.Via(n, "w", pass(), mod4)
			pipeline.Sink(pipeline.Then[int, int](n, nil, pipeline.Options{}), "sink", nop)
		},
	} {
		p := pipeline.New()
		build(p)
		for range 2 { // the error stays, and the Flows are released only once
			if err := p.Run(context.Background()); !errors.Is(err, pipeline.ErrInvalidGraph) {
				t.Errorf("%s: Run = %v, want ErrInvalidGraph", name, err)
			}
		}
	}
}
