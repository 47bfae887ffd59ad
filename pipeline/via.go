package pipeline

import (
	"context"
	"fmt"
	"reflect"

	"github.com/reugn/go-streams"
)

// Via passes a node's items through a go-streams Flow (for example flow.NewFilter, flow.NewMap,
// flow.NewThrottler) and continues the typed chain with its output. key gives the ordering key of
// the Flow's output items. name names the node in metrics and errors.
//
// # Items and types
//
// Items enter f unwrapped from the engine's envelope: f.In() receives plain T values, so f's
// input element type must be T (flow.NewFilter[T], flow.NewMap[T, U], ...). Every value f
// emits must be a U (or nil, when U is an interface type); it is given the key key(value) and
// sent on. A value of another type fails the run with a [*StageError] naming this node. The
// keys given by key replace the incoming ones: the following stages order items by them.
//
// # Ordering
//
// Order per key is whatever f preserves. go-streams' Map, Filter and FlatMap with parallelism
// 1, and the Throttler, keep their input order, so each key's items leave in the order they
// came in; with more parallelism, or with windows and batches, the order is f's.
//
// # Running, cancellation and ownership
//
// Run connects f the go-streams way, with f.To into an adapter sink (so operators that do their
// work in To, like the Throttler, behave as documented), in goroutines that Run waits for: one
// feeds f.In(), one runs f.To, one re-keys f's output and sends it on. When the input ends, or
// once the run is cancelled, the node closes f.In() and keeps draining f's output (discarding
// it after a cancellation) until f closes it, so go-streams' goroutines end before Run returns.
// A Flow that does not close its output once its input is closed and its output drained
// therefore keeps Run from returning.
//
// f belongs to the pipeline from this call on: pass a fresh Flow, connected to nothing else,
// to one Via. go-streams starts a Flow's goroutines when it is built; if the node cannot be
// added (a build error, see [ErrInvalidGraph]), Via closes f's input and drains it at once so
// that they end, and Run does the same for the Flows already added when it returns a build
// error. A pipeline that is never run leaves f's goroutines blocked.
//
// # Panics
//
// f's functions run in go-streams' goroutines, outside the engine: a panic there (including
// go-streams' type assertion of an input that is not f's element type) crashes the program as
// any goroutine's panic does. Recover inside the functions given to go-streams if they may
// panic. key runs in the engine: a panic in it fails the run with a [*PanicError].
//
// # Backpressure and metrics
//
// The node holds at most one item on the way into f and one on the way out, plus what f
// buffers (a Throttler's buffer, one item per Map or Filter goroutine); backpressure passes
// through f when it blocks on output, as go-streams' operators do except a Throttler in
// Discard mode. In [Pipeline.Metrics], Items counts the outputs passed on and Errors those
// rejected (wrong type, or key failed); Workers, Queue and the durations are zero, since f's
// concurrency and timing are its own and an output need not come from one input.
func Via[T, U any](n *Node[T], name string, f streams.Flow, key func(U) string) *Node[U] {
	p := n.p
	what := fmt.Sprintf("via %q", name)
	nilFlow := isNilFlow(f)
	p.mu.Lock()
	next := &Node[U]{p: p, id: n.id + 1}
	added := false
	switch {
	case nilFlow:
		p.invalid("%s: nil flow", what)
	case key == nil:
		p.invalid("%s: nil key", what)
	case p.extendable(n.id, what):
		p.stages = append(p.stages, &viaNode[T, U]{name: name, flow: f, key: key, in: make(chan any), out: make(chan any)})
		added = true
	}
	p.mu.Unlock()
	if !added && !nilFlow {
		discard(f) // outside the lock: it runs f's code
	}
	return next
}

// isNilFlow reports whether f is nil or holds a nil pointer (or other nil reference).
func isNilFlow(f streams.Flow) bool {
	if f == nil {
		return true
	}
	switch v := reflect.ValueOf(f); v.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Chan, reflect.Func, reflect.Slice, reflect.Interface:
		return v.IsNil()
	}
	return false
}

// discard ends a Flow that will not run: it closes the Flow's input and streams its output, if
// any, to a sink that drops it, which ends go-streams' goroutines.
func discard(f streams.Flow) {
	close(f.In())
	s := newChanSink()
	go func() {
		defer close(s.done)
		for range s.in {
		}
	}()
	f.To(s)
}

// chanSink is a streams.Sink whose input its owner reads: AwaitCompletion waits until the
// owner closes done.
type chanSink struct {
	in   chan any
	done chan struct{}
}

var _ streams.Sink = (*chanSink)(nil)

func newChanSink() *chanSink { return &chanSink{in: make(chan any), done: make(chan struct{})} }

// In returns the inlet.
func (s *chanSink) In() chan<- any { return s.in }

// AwaitCompletion blocks until the owner has handled the closed inlet.
func (s *chanSink) AwaitCompletion() { <-s.done }

// viaNode embeds a go-streams Flow in the chain as a go-streams Flow itself: a feeder goroutine
// unwraps items from the inlet into the Flow's input, a forwarder goroutine streams the Flow's
// output with its To into a chanSink, and a collector goroutine reads that sink, checks the
// type, keys the items and sends them, in envelopes, to the outlet.
type viaNode[In, Out any] struct {
	name  string
	flow  streams.Flow
	key   func(Out) string
	in    chan any // unbuffered inlet, read only by the feeder
	out   chan any // unbuffered outlet, written by the collector, closed when it is done
	stats stats
	r     *run // set by start, before any other method is called
}

var _ streams.Flow = (*viaNode[any, any])(nil)

// In returns the inlet.
func (n *viaNode[In, Out]) In() chan<- any { return n.in }

// Out returns the outlet; it is closed once the embedded Flow has closed its output.
func (n *viaNode[In, Out]) Out() <-chan any { return n.out }

// Via streams the node's output to f and returns f.
func (n *viaNode[In, Out]) Via(f streams.Flow) streams.Flow {
	n.r.stream(n, f)
	return f
}

// To streams the node's output to sink and blocks until the sink has completed.
func (n *viaNode[In, Out]) To(sink streams.Sink) {
	transmit(n, sink)
	sink.AwaitCompletion()
}

func (n *viaNode[In, Out]) nodeName() string { return n.name }

func (n *viaNode[In, Out]) metrics() StageMetrics { return n.stats.snapshot(n.name, 0, 0) }

func (n *viaNode[In, Out]) release() { discard(n.flow) }

func (n *viaNode[In, Out]) start(r *run) {
	n.r = r
	s := newChanSink()
	r.goFn(func() { n.feed(r.ctx) })
	r.goFn(func() { n.flow.To(s) }) // returns once the Flow's output is closed and s is done
	r.goFn(func() {
		defer close(s.done)
		defer close(n.out)
		n.collect(r, s.in)
	})
}

// feed sends the inlet's items to the Flow until the inlet closes or the run is cancelled, then
// closes the Flow's input, which ends the Flow once its output is drained. After cancellation
// it keeps reading the inlet, discarding, until the upstream closes it, so that no upstream
// goroutine stays blocked on a send.
func (n *viaNode[In, Out]) feed(ctx context.Context) {
	fin := n.flow.In()
	for v := range n.in {
		if ctx.Err() != nil || !send(ctx, fin, v.(envelope[In]).item) {
			break
		}
	}
	close(fin)
	for range n.in {
	}
}

// collect checks, keys and sends on every item the Flow emits, until the Flow's output ends.
// After cancellation it keeps reading, discarding, so that the Flow can drain and end.
func (n *viaNode[In, Out]) collect(r *run, in <-chan any) {
	for v := range in {
		if r.ctx.Err() != nil {
			continue
		}
		item, ok := v.(Out)
		if !ok && v == nil {
			var zero Out
			ok = any(zero) == nil // a nil interface value is a valid Out when Out is an interface type
		}
		if !ok {
			n.stats.errors.Add(1)
			r.fail(&StageError{Stage: n.name, Err: fmt.Errorf("pipeline: flow emitted a %T, want a %v", v, reflect.TypeFor[Out]())})
			continue
		}
		key, err := n.call(item)
		if err != nil {
			n.stats.errors.Add(1)
			r.fail(itemError(n.name, "", item, err))
			continue
		}
		if send(r.ctx, n.out, envelope[Out]{key: key, item: item}) {
			n.stats.items.Add(1)
		}
	}
}

// call calls key, turning a panic into an error.
func (n *viaNode[In, Out]) call(item Out) (key string, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError(v)
		}
	}()
	return n.key(item), nil
}
