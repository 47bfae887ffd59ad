package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/reugn/go-streams"
)

// Pipeline is a graph of one source, a chain of stages and one sink. Build it, then Run it once.
//
// Building (Source, Then, Via, Sink) and Run may be called from different goroutines. Nodes added
// after Run has started are ignored: the graph is frozen when it starts. Metrics may be called
// at any time.
type Pipeline struct {
	mu     sync.Mutex // guards the fields below
	source sourceRunner
	stages []stageRunner // in chain order
	sink   sinkRunner
	err    error // first build error; Run returns it
	ran    bool  // Run has started; the graph is frozen from then on
	freed  bool  // the Flows of Via nodes were released because of a build error
}

// The unexported runner interfaces are what Run needs from the typed nodes: the go-streams
// interface to connect them, start to launch their goroutines, and a metrics snapshot.
type (
	metered interface {
		nodeName() string
		metrics() StageMetrics
	}
	sourceRunner interface {
		streams.Source
		metered
		start(r *run)
	}
	stageRunner interface {
		streams.Flow
		metered
		start(r *run)
	}
	sinkRunner interface {
		streams.Sink
		metered
		start(r *run)
	}
	// releaser is a node holding resources that must be freed if the pipeline never runs.
	releaser interface {
		release()
	}
)

// New returns an empty pipeline.
func New() *Pipeline { return &Pipeline{} }

// Run starts every goroutine, waits until the source is exhausted and every item reached the sink, or until the
// first error (or ctx is cancelled); then cancels, drains and waits for every goroutine before returning.
// It returns nil, the first *StageError, or ctx.Err() (wrapped) if the caller cancelled.
// Calling Run twice, or on an incomplete graph (no source/sink), returns an error (ErrAlreadyRun / ErrIncomplete).
// An incomplete graph does not use up the pipeline's one run: it can be completed and run.
// A graph with a build error (ErrInvalidGraph) can never run: Run returns that error and ends
// the go-streams Flows given to Via (see [Via]).
func (p *Pipeline) Run(ctx context.Context) error {
	p.mu.Lock()
	switch {
	case p.ran:
		p.mu.Unlock()
		return ErrAlreadyRun
	case p.err != nil:
		var free []releaser
		if !p.freed {
			p.freed = true
			for _, s := range p.stages {
				if r, ok := s.(releaser); ok {
					free = append(free, r)
				}
			}
		}
		err := p.err
		p.mu.Unlock()
		for _, r := range free {
			r.release() // outside the lock: it runs the Flow's code
		}
		return err
	case p.source == nil || p.sink == nil:
		p.mu.Unlock()
		return ErrIncomplete
	}
	p.ran = true
	source, stages, sink := p.source, p.stages, p.sink
	p.mu.Unlock()

	r := newRun(ctx)
	defer r.cancel()
	sink.start(r)
	for _, s := range stages {
		s.start(r)
	}
	source.start(r)

	// Connect the nodes the go-streams way. The last hop runs in this goroutine and, like
	// every go-streams To, returns once the sink has consumed its closed input.
	if len(stages) == 0 {
		r.stream(source, sink)
		sink.AwaitCompletion()
	} else {
		f := source.Via(stages[0])
		for _, s := range stages[1:] {
			f = f.Via(s)
		}
		f.To(sink)
	}
	r.wg.Wait()

	if err := r.failure(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("pipeline: run cancelled: %w", err)
	}
	return nil
}

// Metrics returns a snapshot for every source/stage/sink in chain order; safe to call during Run (for progress).
func (p *Pipeline) Metrics() []StageMetrics {
	p.mu.Lock()
	nodes := make([]metered, 0, len(p.stages)+2)
	if p.source != nil {
		nodes = append(nodes, p.source)
	}
	for _, s := range p.stages {
		nodes = append(nodes, s)
	}
	if p.sink != nil {
		nodes = append(nodes, p.sink)
	}
	p.mu.Unlock()

	m := make([]StageMetrics, len(nodes))
	for i, n := range nodes {
		m[i] = n.metrics()
	}
	return m
}

// run is the state of one execution shared by every node.
type run struct {
	ctx    context.Context // cancelled on the first failure or by the caller
	cancel context.CancelFunc
	wg     sync.WaitGroup // every goroutine the run starts; Run waits for it

	mu  sync.Mutex
	err error // guarded by mu; the first failure
}

func newRun(parent context.Context) *run {
	ctx, cancel := context.WithCancel(parent)
	return &run{ctx: ctx, cancel: cancel}
}

// goFn runs f in a goroutine that Run waits for.
func (r *run) goFn(f func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		f()
	}()
}

// stream copies outlet to inlet and then closes inlet, like go-streams' flow.DoStream, but in
// a goroutine that Run waits for.
func (r *run) stream(outlet streams.Outlet, inlet streams.Inlet) {
	r.goFn(func() { transmit(outlet, inlet) })
}

// transmit is the go-streams hop between two nodes. It never gives up on a send: every node
// keeps reading its input until it is closed, even after cancellation, so the hop always ends.
func transmit(outlet streams.Outlet, inlet streams.Inlet) {
	in := inlet.In()
	for element := range outlet.Out() {
		in <- element
	}
	close(in)
}

// send sends v on ch unless ctx is cancelled first, and reports whether it was sent.
func send(ctx context.Context, ch chan<- any, v any) bool {
	select {
	case ch <- v:
		return true
	case <-ctx.Done():
		return false
	}
}

// fail records err as the run's failure unless the run already failed or was cancelled (then
// err is most likely a consequence of that), and cancels the run.
func (r *run) fail(err error) {
	r.mu.Lock()
	if r.err == nil && r.ctx.Err() == nil {
		r.err = err
	}
	r.mu.Unlock()
	r.cancel()
}

// failure returns the recorded failure, if any.
func (r *run) failure() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// counts reports whether err, returned by user code, is a genuine failure rather than the
// run's own cancellation echoed back.
func (r *run) counts(err error) bool {
	cerr := r.ctx.Err()
	return cerr == nil || !errors.Is(err, cerr)
}
