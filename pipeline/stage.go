package pipeline

import (
	"context"
	"runtime"
)

// Stage transforms one item. Process may be called by several goroutines at once, but never
// concurrently for two items with the same key, and items of one key arrive in their order.
//
// Process should return promptly once ctx is cancelled: Run waits for every call in flight
// before it returns.
type Stage[In, Out any] interface {
	Name() string
	Process(ctx context.Context, in In) (Out, error)
}

// StageFunc adapts a function to a Stage.
func StageFunc[In, Out any](name string, fn func(context.Context, In) (Out, error)) Stage[In, Out] {
	return stageFunc[In, Out]{name: name, fn: fn}
}

type stageFunc[In, Out any] struct {
	name string
	fn   func(context.Context, In) (Out, error)
}

// Name returns the name given to StageFunc.
func (s stageFunc[In, Out]) Name() string { return s.name }

// Process calls the function given to StageFunc.
func (s stageFunc[In, Out]) Process(ctx context.Context, in In) (Out, error) {
	return s.fn(ctx, in)
}

// Options bound a stage's concurrency. Zero values take defaults.
type Options struct {
	Workers int // goroutines; default runtime.GOMAXPROCS(0)
	Queue   int // items accepted but not yet started (the bounded input queue); default 2*Workers
}

// withDefaults resolves zero (and, defensively, negative) fields. It runs when the stage is
// added, so Metrics reports the effective values even before Run.
func (o Options) withDefaults() Options {
	if o.Workers <= 0 {
		o.Workers = runtime.GOMAXPROCS(0)
	}
	if o.Queue <= 0 {
		o.Queue = 2 * o.Workers
	}
	return o
}
