package pipeline_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kvflow/kvflow/pipeline"
)

// checked returns a pass-through stage that verifies the ordering contract and sleeps a random
// few microseconds to shuffle the interleavings.
func checked(name string, c *orderCheck, maxSleep time.Duration) pipeline.Stage[item, item] {
	return pipeline.StageFunc(name, func(_ context.Context, it item) (item, error) {
		c.enter(it)
		defer c.leave(it)
		if maxSleep > 0 {
			time.Sleep(rand.N(maxSleep))
		}
		return it, nil
	})
}

func TestPerKeyOrderThroughThreeStages(t *testing.T) {
	const keys, per = 16, 100
	p := pipeline.New()
	checks := []*orderCheck{newOrderCheck(), newOrderCheck(), newOrderCheck()}
	n := pipeline.Source(p, "src", keyOf, roundRobin(keys, per))
	n = pipeline.Then(n, checked("a", checks[0], 50*time.Microsecond), pipeline.Options{Workers: 4})
	n = pipeline.Then(n, checked("b", checks[1], 50*time.Microsecond), pipeline.Options{Workers: 3, Queue: 2})
	n = pipeline.Then(n, checked("c", checks[2], 50*time.Microsecond), pipeline.Options{Workers: 5, Queue: 20})
	col := newCollector()
	pipeline.Sink(n, "sink", col.sink)

	if err := p.Run(context.Background()); err != nil {
		t.Fatalf("Run: %v", err)
	}
	for i, c := range checks {
		c.verify(t, []string{"a", "b", "c"}[i])
	}
	col.check.verify(t, "sink")
	if got := len(col.items()); got != keys*per {
		t.Errorf("sink got %d items, want %d", got, keys*per)
	}
}

// TestKeysRunConcurrently proves that two keys are inside Process at the same time: each item
// waits at a barrier that opens only when both have arrived.
func TestKeysRunConcurrently(t *testing.T) {
	var arrived sync.WaitGroup
	arrived.Add(2)
	open := make(chan struct{})
	go func() { arrived.Wait(); close(open) }()

	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(_ context.Context, emit func(item) error) error {
		for _, k := range []string{"a", "b"} {
			if err := emit(item{key: k}); err != nil {
				return err
			}
		}
		return nil
	})
	n = pipeline.Then(n, pipeline.StageFunc("barrier", func(ctx context.Context, it item) (item, error) {
		arrived.Done()
		select {
		case <-open:
			return it, nil
		case <-time.After(10 * time.Second): // failure path only: keep a broken engine from hanging the test
			return it, errors.New("the other key never entered Process")
		}
	}), pipeline.Options{Workers: 2})
	col := newCollector()
	pipeline.Sink(n, "sink", col.sink)
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := len(col.items()); got != 2 {
		t.Errorf("sink got %d items, want 2", got)
	}
}

// TestHotKeyDoesNotBlockOthers blocks the first item of a hot key inside Process, queues more
// items of that key behind it, and requires every item of the other keys to reach the sink
// before the hot item is released.
func TestHotKeyDoesNotBlockOthers(t *testing.T) {
	const cold = 200
	release := make(chan struct{})
	coldDone := make(chan struct{})

	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(_ context.Context, emit func(item) error) error {
		for s := range 4 {
			if err := emit(item{key: "hot", seq: s}); err != nil {
				return err
			}
		}
		for s := range cold / 10 {
			for k := range 10 {
				if err := emit(item{key: string(rune('a' + k)), seq: s}); err != nil {
					return err
				}
			}
		}
		return nil
	})
	c := newOrderCheck()
	n = pipeline.Then(n, pipeline.StageFunc("hot-blocks", func(_ context.Context, it item) (item, error) {
		c.enter(it)
		defer c.leave(it)
		if it.key == "hot" && it.seq == 0 {
			<-release
		}
		return it, nil
	}), pipeline.Options{Workers: 2, Queue: 6})
	n = pipeline.Then(n, checked("after", newOrderCheck(), 0), pipeline.Options{Workers: 2, Queue: 2})

	var (
		seenCold  int
		hotBefore int // hot items that arrived before all cold ones
	)
	col := newCollector()
	pipeline.Sink(n, "sink", func(ctx context.Context, it item) error {
		if it.key == "hot" {
			if seenCold < cold {
				hotBefore++
			}
		} else if seenCold++; seenCold == cold {
			close(coldDone)
		}
		return col.sink(ctx, it)
	})

	go func() {
		select {
		case <-coldDone:
		case <-time.After(10 * time.Second): // failure path only
			t.Error("other keys did not get through while the hot key was blocked")
		}
		close(release)
	}()
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	c.verify(t, "hot-blocks")
	col.check.verify(t, "sink")
	if hotBefore != 0 {
		t.Errorf("%d hot items overtook the blocked hot item", hotBefore)
	}
	if got := len(col.items()); got != cold+4 {
		t.Errorf("sink got %d items, want %d", got, cold+4)
	}
}

// TestBackpressure blocks the sink on its first item and checks that the source can emit
// exactly as many items as the pipeline can hold, no more, and that it proceeds when the sink
// is unblocked.
func TestBackpressure(t *testing.T) {
	const total = 500
	var emitted atomic.Int64
	unblock := make(chan struct{})

	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(_ context.Context, emit func(item) error) error {
		for i := range total {
			// A key per item so that every worker of every stage can hold one.
			if err := emit(item{key: string(rune(i)), seq: 0}); err != nil {
				return err
			}
			emitted.Add(1)
		}
		return nil
	})
	opts := []pipeline.Options{{Workers: 2, Queue: 4}, {Workers: 3, Queue: 1}, {Workers: 1, Queue: 5}}
	for i, o := range opts {
		n = pipeline.Then(n, checked(string(rune('a'+i)), newOrderCheck(), 0), o)
	}
	var sunk atomic.Int64
	pipeline.Sink(n, "sink", func(ctx context.Context, it item) error {
		if sunk.Add(1) == 1 {
			<-unblock
		}
		return nil
	})

	// What the pipeline can hold: each stage's workers and queue, one item in each go-streams
	// hop (source->a, a->b, b->c, c->sink), one in the sink.
	bound := int64(0)
	for _, m := range p.Metrics()[1 : 1+len(opts)] {
		bound += int64(m.Workers + m.Queue)
	}
	bound += int64(len(opts)+1) + 1
	if bound != 21 {
		t.Fatalf("bound = %d, want 21 from the options", bound)
	}

	errc := make(chan error, 1)
	go func() { errc <- p.Run(context.Background()) }()

	// The pipeline fills up to the bound; that must happen, so the deadline only guards
	// against a hang.
	deadline := time.Now().Add(10 * time.Second)
	for emitted.Load() < bound && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	// Give a leaky engine the chance to exceed the bound.
	time.Sleep(50 * time.Millisecond)
	if got := emitted.Load(); got != bound {
		t.Errorf("with the sink blocked the source emitted %d items, want exactly %d", got, bound)
	}
	close(unblock)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if got := sunk.Load(); got != total {
		t.Errorf("sink got %d items after unblocking, want %d", got, total)
	}
}

func TestEmptySource(t *testing.T) {
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(context.Context, func(item) error) error { return nil })
	n = pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{})
	called := false
	pipeline.Sink(n, "sink", func(context.Context, item) error { called = true; return nil })
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if called {
		t.Error("sink called for an empty source")
	}
	for _, m := range p.Metrics() {
		if m.Items != 0 || m.Errors != 0 {
			t.Errorf("%s: items %d errors %d, want 0", m.Name, m.Items, m.Errors)
		}
	}
}

func TestSourceStraightToSink(t *testing.T) {
	p := pipeline.New()
	col := newCollector()
	pipeline.Sink(pipeline.Source(p, "src", keyOf, roundRobin(3, 10)), "sink", col.sink)
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	col.check.verify(t, "sink")
	if got := len(col.items()); got != 30 {
		t.Errorf("sink got %d items, want 30", got)
	}
}

func TestRunTwice(t *testing.T) {
	p := pipeline.New()
	pipeline.Sink(pipeline.Source(p, "src", keyOf, roundRobin(1, 1)), "sink", func(context.Context, item) error { return nil })
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := p.Run(context.Background()); !errors.Is(err, pipeline.ErrAlreadyRun) {
		t.Errorf("second Run = %v, want ErrAlreadyRun", err)
	}
}

func TestIncompleteGraph(t *testing.T) {
	if err := pipeline.New().Run(context.Background()); !errors.Is(err, pipeline.ErrIncomplete) {
		t.Errorf("empty pipeline: Run = %v, want ErrIncomplete", err)
	}
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
	pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{})
	if err := p.Run(context.Background()); !errors.Is(err, pipeline.ErrIncomplete) {
		t.Errorf("no sink: Run = %v, want ErrIncomplete", err)
	}
}

func TestInvalidGraph(t *testing.T) {
	nop := func(context.Context, item) error { return nil }
	for name, build := range map[string]func(p *pipeline.Pipeline){
		"branch": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
			pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{})
			pipeline.Sink(n, "sink", nop) // n already feeds "a"
		},
		"two sources": func(p *pipeline.Pipeline) {
			pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
			pipeline.Sink(pipeline.Source(p, "src2", keyOf, roundRobin(1, 1)), "sink", nop)
		},
		"then after sink": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
			pipeline.Sink(n, "sink", nop)
			pipeline.Then(n, checked("a", newOrderCheck(), 0), pipeline.Options{})
		},
		"nil stage": func(p *pipeline.Pipeline) {
			n := pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
			pipeline.Sink(pipeline.Then[item, item](n, nil, pipeline.Options{}), "sink", nop)
		},
		"nil key": func(p *pipeline.Pipeline) {
			pipeline.Sink(pipeline.Source(p, "src", nil, roundRobin(1, 1)), "sink", nop)
		},
	} {
		p := pipeline.New()
		build(p)
		if err := p.Run(context.Background()); !errors.Is(err, pipeline.ErrInvalidGraph) {
			t.Errorf("%s: Run = %v, want ErrInvalidGraph", name, err)
		}
	}
}

func TestOptionsDefaults(t *testing.T) {
	procs := runtime.GOMAXPROCS(0)
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(1, 1))
	n = pipeline.Then(n, checked("default", newOrderCheck(), 0), pipeline.Options{})
	n = pipeline.Then(n, checked("workers", newOrderCheck(), 0), pipeline.Options{Workers: 3})
	n = pipeline.Then(n, checked("queue", newOrderCheck(), 0), pipeline.Options{Queue: 1})
	n = pipeline.Then(n, checked("both", newOrderCheck(), 0), pipeline.Options{Workers: 2, Queue: 7})
	pipeline.Sink(n, "sink", func(context.Context, item) error { return nil })
	want := map[string][2]int{
		"src":     {1, 0},
		"default": {procs, 2 * procs},
		"workers": {3, 6},
		"queue":   {procs, 1},
		"both":    {2, 7},
		"sink":    {1, 0},
	}
	for _, m := range p.Metrics() {
		if got := [2]int{m.Workers, m.Queue}; got != want[m.Name] {
			t.Errorf("%s: workers, queue = %v, want %v", m.Name, got, want[m.Name])
		}
	}
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestOneWorkerKeepsGlobalOrder: with Workers == 1 everywhere, items of all keys reach the sink
// exactly in emission order, even though an item often waits behind an earlier one of its key.
func TestOneWorkerKeepsGlobalOrder(t *testing.T) {
	const total = 1000
	var order []item
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, func(_ context.Context, emit func(item) error) error {
		seq := map[string]int{}
		for range total {
			k := string(rune('a' + rand.N(4)))
			it := item{key: k, seq: seq[k]}
			seq[k]++
			order = append(order, it)
			if err := emit(it); err != nil {
				return err
			}
		}
		return nil
	})
	for i := range 3 {
		n = pipeline.Then(n, checked(string(rune('a'+i)), newOrderCheck(), 20*time.Microsecond), pipeline.Options{Workers: 1, Queue: 1 + 3*i})
	}
	col := newCollector()
	pipeline.Sink(n, "sink", col.sink)
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := col.items()
	if len(got) != total {
		t.Fatalf("sink got %d items, want %d", len(got), total)
	}
	for i := range got {
		if got[i] != order[i] {
			t.Fatalf("item %d: got %v, want %v", i, got[i], order[i])
		}
	}
}
