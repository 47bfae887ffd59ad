package storage

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// Priority orders the loads of a Prefetcher: lower values run first, and
// loads of equal priority run in the order they were asked for.
type Priority uint8

// Load priorities, most urgent first.
const (
	// PriorityNow is a load a step is waiting on.
	PriorityNow Priority = iota
	// PriorityNext is a load for a step already in the queue before attend.
	PriorityNext
	// PriorityLookahead is a load for a step that has not been issued yet
	// (the next layers of a request, the prefix of a request that just
	// arrived).
	PriorityLookahead
)

// String names the priority in reports.
func (p Priority) String() string {
	switch p {
	case PriorityNow:
		return "now"
	case PriorityNext:
		return "next"
	case PriorityLookahead:
		return "lookahead"
	}
	return fmt.Sprintf("priority(%d)", uint8(p))
}

// LoadFunc loads one page. It runs on a prefetcher's worker and must return
// when ctx is done.
type LoadFunc func(ctx context.Context, key PageKey) (*Page, error)

// PrefetchOptions configure a Prefetcher.
type PrefetchOptions struct {
	// Workers is the number of loads run at once; default 4. Loads wait on
	// I/O, so more workers than cores pay off.
	Workers int
	// Load loads a page; required.
	Load LoadFunc
}

// Prefetcher runs page loads on a bounded pool of workers, most urgent
// first, with at most one load of a page queued or in flight: asking for a
// page already on its way returns the same Load and, if the new request is
// more urgent, moves the load up the queue.
//
// A Prefetcher is safe for concurrent use. Its workers stop when the context
// given to NewPrefetcher is done or Close is called; loads still queued then
// fail with the context's error or ErrClosed.
type Prefetcher struct {
	load LoadFunc

	mu sync.Mutex
	// queue holds the loads not yet started, most urgent first; pending
	// maps each page to its load while it is queued or running. Both
	// guarded by mu.
	queue   loadQueue
	pending map[PageKey]*Load
	seq     uint64 // order of requests within a priority; guarded by mu
	closed  bool   // guarded by mu
	wake    *sync.Cond

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	issued, merged, raised, completed, failed, bytes atomic.Uint64
}

// Load is one page load, shared by every caller that asked for the page
// while it was queued or running.
type Load struct {
	Key PageKey

	done chan struct{}
	page *Page // set before done is closed
	err  error // set before done is closed

	// prio, seq and index place the load in the queue; guarded by the
	// prefetcher's mu. index is -1 once the load has left the queue.
	prio  Priority
	seq   uint64
	index int
}

// Done is closed when the load has finished.
func (l *Load) Done() <-chan struct{} { return l.done }

// Result returns the loaded page or the load's error. It must only be called
// after Done is closed.
func (l *Load) Result() (*Page, error) { return l.page, l.err }

// Wait waits for the load and returns its result, or ctx's error if ctx is
// done first.
func (l *Load) Wait(ctx context.Context) (*Page, error) {
	select {
	case <-l.done:
		return l.page, l.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Ready reports whether the load has finished.
func (l *Load) Ready() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// NewPrefetcher starts a prefetcher whose workers run until ctx is done or
// Close is called.
func NewPrefetcher(ctx context.Context, o PrefetchOptions) (*Prefetcher, error) {
	if o.Load == nil {
		return nil, errors.New("prefetcher: no load function")
	}
	if o.Workers == 0 {
		o.Workers = 4
	}
	if o.Workers < 0 {
		return nil, fmt.Errorf("prefetcher: %d workers: must be positive", o.Workers)
	}
	p := &Prefetcher{load: o.Load, pending: map[PageKey]*Load{}}
	p.wake = sync.NewCond(&p.mu)
	p.ctx, p.cancel = context.WithCancel(ctx)
	for range o.Workers {
		p.wg.Go(p.work)
	}
	// Wake the workers when the context ends, so that they drain the queue.
	p.wg.Go(func() {
		<-p.ctx.Done()
		p.mu.Lock()
		p.closed = true
		p.wake.Broadcast()
		p.mu.Unlock()
	})
	return p, nil
}

// Fetch returns the load of key, starting one at priority prio unless one is
// already queued or running. A queued load asked for more urgently moves up.
// After Close, Fetch returns a load that has failed with ErrClosed.
func (p *Prefetcher) Fetch(key PageKey, prio Priority) *Load {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		l := &Load{Key: key, done: make(chan struct{}), err: p.closedErr(), index: -1}
		close(l.done)
		return l
	}
	if l, ok := p.pending[key]; ok {
		p.merged.Add(1)
		if prio < l.prio && l.index >= 0 {
			l.prio = prio
			heap.Fix(&p.queue, l.index)
			p.raised.Add(1)
		}
		return l
	}
	p.seq++
	l := &Load{Key: key, done: make(chan struct{}), prio: prio, seq: p.seq}
	p.pending[key] = l
	heap.Push(&p.queue, l)
	p.issued.Add(1)
	p.wake.Signal()
	return l
}

// closedErr is the error of loads that never ran. Called with mu held.
func (p *Prefetcher) closedErr() error {
	if err := p.ctx.Err(); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	if cause := context.Cause(p.ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return ErrClosed
}

// work runs queued loads until the prefetcher closes, then fails what is
// still queued.
func (p *Prefetcher) work() {
	for {
		p.mu.Lock()
		for len(p.queue) == 0 && !p.closed {
			p.wake.Wait()
		}
		if p.closed || p.ctx.Err() != nil {
			// Fail the rest of the queue; every worker drains, one wins
			// each load.
			var rest []*Load
			for len(p.queue) > 0 {
				l := heap.Pop(&p.queue).(*Load)
				delete(p.pending, l.Key)
				rest = append(rest, l)
			}
			err := p.closedErr()
			p.mu.Unlock()
			for _, l := range rest {
				l.err = err
				p.failed.Add(1)
				close(l.done)
			}
			return
		}
		l := heap.Pop(&p.queue).(*Load)
		p.mu.Unlock()

		page, err := p.load(p.ctx, l.Key)
		p.mu.Lock()
		delete(p.pending, l.Key)
		p.mu.Unlock()
		l.page, l.err = page, err
		if err != nil {
			p.failed.Add(1)
		} else {
			p.completed.Add(1)
			if page != nil {
				p.bytes.Add(uint64(page.Size()))
			}
		}
		close(l.done)
	}
}

// Close stops the workers after the loads in flight and fails the queued
// ones with ErrClosed. It is idempotent.
func (p *Prefetcher) Close() {
	p.mu.Lock()
	p.closed = true
	p.wake.Broadcast()
	p.mu.Unlock()
	p.cancel()
	p.wg.Wait()
}

// PrefetchStats are a prefetcher's counters.
type PrefetchStats struct {
	// Issued counts loads started; Merged counts requests for a page whose
	// load was already queued or running, Raised those of them that moved
	// the load up the queue.
	Issued, Merged, Raised uint64
	// Completed and Failed count finished loads; Bytes is what the
	// completed ones loaded.
	Completed, Failed, Bytes uint64
}

// Stats returns a snapshot of the counters.
func (p *Prefetcher) Stats() PrefetchStats {
	return PrefetchStats{Issued: p.issued.Load(), Merged: p.merged.Load(), Raised: p.raised.Load(),
		Completed: p.completed.Load(), Failed: p.failed.Load(), Bytes: p.bytes.Load()}
}

// loadQueue is a heap of loads, by priority then by arrival.
type loadQueue []*Load

func (q loadQueue) Len() int { return len(q) }
func (q loadQueue) Less(i, j int) bool {
	if q[i].prio != q[j].prio {
		return q[i].prio < q[j].prio
	}
	return q[i].seq < q[j].seq
}
func (q loadQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *loadQueue) Push(x any) {
	l := x.(*Load)
	l.index = len(*q)
	*q = append(*q, l)
}
func (q *loadQueue) Pop() any {
	old := *q
	l := old[len(old)-1]
	old[len(old)-1] = nil
	l.index = -1
	*q = old[:len(old)-1]
	return l
}
