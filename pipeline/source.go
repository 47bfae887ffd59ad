package pipeline

import (
	"context"
	"fmt"

	"github.com/reugn/go-streams"
)

// Source adds the pipeline's source. key gives each item's ordering key. gen calls emit for each item;
// emit blocks while downstream is full (backpressure) and returns the context's error once the run is cancelled;
// gen must then return. An error from gen fails the run (as a StageError with Stage == name).
//
// emit is safe for concurrent use, though items emitted concurrently have no defined order
// between them; it must not be called after gen returns.
func Source[T any](p *Pipeline, name string, key func(T) string, gen func(ctx context.Context, emit func(T) error) error) *Node[T] {
	p.mu.Lock()
	defer p.mu.Unlock()
	what := fmt.Sprintf("source %q", name)
	switch {
	case p.ran:
		p.invalid("%s added after Run", what)
	case p.source != nil:
		p.invalid("%s: the pipeline already has %s", what, p.nameOf(0))
	case key == nil || gen == nil:
		p.invalid("%s: nil key or gen", what)
	default:
		p.source = &sourceNode[T]{name: name, key: key, gen: gen, out: make(chan any)}
	}
	return &Node[T]{p: p, id: 0}
}

// sourceNode runs gen in one goroutine and sends what it emits, in envelopes, to its outlet.
type sourceNode[T any] struct {
	name  string
	key   func(T) string
	gen   func(context.Context, func(T) error) error
	out   chan any // unbuffered: an item is emitted once the next hop has taken it
	stats stats
	r     *run // set by start, before any other method is called
}

var _ streams.Source = (*sourceNode[any])(nil)

// Out returns the outlet; it is closed when gen returns.
func (s *sourceNode[T]) Out() <-chan any { return s.out }

// Via streams the source's output to f and returns f.
func (s *sourceNode[T]) Via(f streams.Flow) streams.Flow {
	s.r.stream(s, f)
	return f
}

func (s *sourceNode[T]) nodeName() string { return s.name }

func (s *sourceNode[T]) metrics() StageMetrics { return s.stats.snapshot(s.name, 1, 0) }

func (s *sourceNode[T]) start(r *run) {
	s.r = r
	r.goFn(func() {
		// Closing the outlet, whatever gen did, is what lets the rest of the chain drain and end.
		defer close(s.out)
		if err := s.generate(r.ctx); err != nil && r.counts(err) {
			s.stats.errors.Add(1)
			r.fail(&StageError{Stage: s.name, Err: err})
		}
	})
}

// generate calls gen, turning a panic (in gen or key) into an error.
func (s *sourceNode[T]) generate(ctx context.Context) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError(v)
		}
	}()
	emit := func(v T) error {
		// Check first so that a cancelled run stops emission even when the outlet is ready.
		if err := ctx.Err(); err != nil {
			return err
		}
		if !send(ctx, s.out, envelope[T]{key: s.key(v), item: v}) {
			return ctx.Err()
		}
		s.stats.items.Add(1)
		return nil
	}
	return s.gen(ctx, emit)
}
