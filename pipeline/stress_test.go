package pipeline_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/kvflow/kvflow/pipeline"
)

// TestStress pushes 8 keys × 2000 items through 3 stages with random pool and queue sizes and
// checks, in every stage and the sink, per-key order, one-at-a-time per key, and exact counts.
func TestStress(t *testing.T) {
	const keys, per = 8, 2000
	seed := rand.Uint64()
	r := rand.New(rand.NewPCG(seed, 0))
	p := pipeline.New()
	n := pipeline.Source(p, "src", keyOf, roundRobin(keys, per))
	var checks []*orderCheck
	var desc string
	for i := range 3 {
		o := pipeline.Options{Workers: 1 + r.IntN(8), Queue: 1 + r.IntN(16)}
		desc += fmt.Sprintf(" %+v", o)
		c := newOrderCheck()
		checks = append(checks, c)
		n = pipeline.Then(n, pipeline.StageFunc(fmt.Sprint("s", i), func(_ context.Context, it item) (item, error) {
			c.enter(it)
			defer c.leave(it)
			return it, nil
		}), o)
	}
	t.Logf("seed %d, options%s", seed, desc)
	col := newCollector()
	pipeline.Sink(n, "sink", col.sink)
	if err := p.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, c := range checks {
		c.verify(t, fmt.Sprint("s", i))
	}
	col.check.verify(t, "sink")
	for _, m := range p.Metrics() {
		if m.Items != keys*per || m.Errors != 0 {
			t.Errorf("%s: items %d errors %d, want %d and 0", m.Name, m.Items, m.Errors, keys*per)
		}
	}
	if got := len(col.items()); got != keys*per {
		t.Errorf("sink got %d items, want %d", got, keys*per)
	}
}
