package pipeline

import (
	"context"
	"fmt"

	"github.com/reugn/go-streams"
)

// Sink ends the chain: fn is called for every item in arrival order from one goroutine.
// An error from fn fails the run. Once the run is cancelled, fn is no longer called.
func Sink[T any](n *Node[T], name string, fn func(ctx context.Context, item T) error) {
	p := n.p
	p.mu.Lock()
	defer p.mu.Unlock()
	what := fmt.Sprintf("sink %q", name)
	if fn == nil {
		p.invalid("%s: nil fn", what)
		return
	}
	if p.extendable(n.id, what) {
		p.sink = &sinkNode[T]{name: name, fn: fn, in: make(chan any), done: make(chan struct{})}
	}
}

// sinkNode calls fn for each item of its inlet in one goroutine.
type sinkNode[T any] struct {
	name  string
	fn    func(context.Context, T) error
	in    chan any
	done  chan struct{} // closed when the inlet is closed and drained
	stats stats
}

var _ streams.Sink = (*sinkNode[any])(nil)

// In returns the inlet.
func (s *sinkNode[T]) In() chan<- any { return s.in }

// AwaitCompletion blocks until the inlet is closed and every item has been handled.
func (s *sinkNode[T]) AwaitCompletion() { <-s.done }

func (s *sinkNode[T]) nodeName() string { return s.name }

func (s *sinkNode[T]) metrics() StageMetrics { return s.stats.snapshot(s.name, 1, 0) }

func (s *sinkNode[T]) start(r *run) {
	r.goFn(func() {
		defer close(s.done)
		for v := range s.in {
			// After cancellation keep reading, discarding, so that upstream can finish.
			if r.ctx.Err() != nil {
				continue
			}
			env := v.(envelope[T])
			begin := now()
			err := s.call(r.ctx, env.item)
			failed := err != nil && r.counts(err)
			s.stats.observe(now()-begin, err == nil, failed)
			if err != nil {
				r.fail(itemError(s.name, env.key, env.item, err))
			}
		}
	})
}

// call calls fn, turning a panic into an error.
func (s *sinkNode[T]) call(ctx context.Context, item T) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError(v)
		}
	}()
	return s.fn(ctx, item)
}
