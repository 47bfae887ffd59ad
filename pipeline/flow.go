package pipeline

import (
	"context"
	"sync"

	"github.com/reugn/go-streams"
)

// stageNode runs one Stage as a go-streams Flow: a dispatcher goroutine moves items from the
// inlet into the stage's scheduler (its bounded, per-key ordered queue, see dispatch.go), and a
// pool of worker goroutines takes items from the scheduler, calls Process and sends the output
// to the outlet.
type stageNode[In, Out any] struct {
	name    string
	process func(context.Context, In) (Out, error) // the stage's Process
	workers int
	queue   int
	in      chan any // unbuffered inlet, read only by the dispatcher
	out     chan any // unbuffered outlet, written by workers, closed after they all exit
	stats   stats
	r       *run // set by start, before any other method is called
}

var _ streams.Flow = (*stageNode[any, any])(nil)

func newStageNode[In, Out any](s Stage[In, Out], o Options) *stageNode[In, Out] {
	return &stageNode[In, Out]{
		name:    s.Name(),
		process: s.Process,
		workers: o.Workers,
		queue:   o.Queue,
		in:      make(chan any),
		out:     make(chan any),
	}
}

// In returns the inlet.
func (n *stageNode[In, Out]) In() chan<- any { return n.in }

// Out returns the outlet; it is closed once the inlet is closed and every item is done.
func (n *stageNode[In, Out]) Out() <-chan any { return n.out }

// Via streams the stage's output to f and returns f.
func (n *stageNode[In, Out]) Via(f streams.Flow) streams.Flow {
	n.r.stream(n, f)
	return f
}

// To streams the stage's output to sink and blocks until the sink has completed.
func (n *stageNode[In, Out]) To(sink streams.Sink) {
	transmit(n, sink)
	sink.AwaitCompletion()
}

func (n *stageNode[In, Out]) nodeName() string { return n.name }

func (n *stageNode[In, Out]) metrics() StageMetrics {
	return n.stats.snapshot(n.name, n.workers, n.queue)
}

func (n *stageNode[In, Out]) start(r *run) {
	n.r = r
	s := newScheduler[In](r.ctx, n.queue)
	var workers sync.WaitGroup
	workers.Add(n.workers)
	for range n.workers {
		r.goFn(func() {
			defer workers.Done()
			n.work(r, s)
		})
	}
	r.goFn(func() {
		n.dispatch(s)
		workers.Wait()
		close(n.out)
	})
}

// dispatch feeds the inlet to the scheduler until the inlet closes; put blocks while the
// queue is full, which is the stage's backpressure. After cancellation the scheduler discards
// what it is given, and dispatch keeps reading until the upstream closes the inlet, so that no
// upstream goroutine stays blocked on a send.
func (n *stageNode[In, Out]) dispatch(s *scheduler[In]) {
	for v := range n.in {
		env := v.(envelope[In])
		env.arrived = now()
		s.put(env)
	}
	s.close()
}

// work runs items until the scheduler says the stage is done.
func (n *stageNode[In, Out]) work(r *run, s *scheduler[In]) {
	var (
		done     string // key of the previous item
		finished bool   // there is a previous item
	)
	for {
		env, ok := s.next(done, finished)
		if !ok {
			return
		}
		n.handle(r, env)
		done, finished = env.key, true
	}
}

// handle processes one item and sends its output. The send happens before the worker reports
// the key done (its next call to the scheduler), which is what keeps a key's outputs in order.
func (n *stageNode[In, Out]) handle(r *run, env envelope[In]) {
	ctx := r.ctx
	if ctx.Err() != nil {
		return // taken just before the scheduler saw the cancellation
	}
	begin := now()
	n.stats.queueWait.Add(int64(begin - env.arrived))
	out, err := n.call(ctx, env.item)
	failed := err != nil && r.counts(err)
	n.stats.observe(now()-begin, err == nil, failed)
	if err != nil {
		r.fail(itemError(n.name, env.key, env.item, err))
		return
	}
	send(ctx, n.out, envelope[Out]{key: env.key, item: out})
}

// call calls Process, turning a panic into an error.
func (n *stageNode[In, Out]) call(ctx context.Context, in In) (out Out, err error) {
	defer func() {
		if v := recover(); v != nil {
			err = panicError(v)
		}
	}()
	return n.process(ctx, in)
}
