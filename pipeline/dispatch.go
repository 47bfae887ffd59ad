package pipeline

import (
	"context"
	"sync"
)

// queued is an item accepted by a stage: seq is its arrival order in the stage.
type queued[T any] struct {
	seq uint64
	env envelope[T]
}

// scheduler is a stage's bounded queue with per-key ordering. The dispatcher is its only
// producer; workers take items from it and report when they finish one.
//
// For every key with an item ready or started, waiting holds the key's later items in arrival
// order. An item whose key is idle goes straight to ready; otherwise it waits, and becomes ready
// when the worker running its key's previous item reports that item done, which the worker does
// only after sending the item's output. Workers take ready items oldest first. Hence:
//
//   - at most one item per key is in Process, and a key's items are processed, and leave the
//     stage, in arrival order;
//   - a key with a backlog holds at most one worker, the others serve the other keys, so no key
//     blocks another (work-conserving: a worker idles only when nothing is ready);
//   - the bound counts ready plus waiting items: while it is reached the dispatcher does not
//     read its inlet, and the upstream blocks (backpressure). A key's backlog counts too: one
//     key can fill the queue only with items that arrived while it was busy, the price of
//     bounded memory with a FIFO inlet.
type scheduler[T any] struct {
	ctx   context.Context // the run's; seen cancelled, the scheduler drains
	bound int             // Options.Queue

	mu      sync.Mutex
	work    sync.Cond           // workers wait here for a ready item or the end of the stage
	room    sync.Cond           // the dispatcher waits here for room in the queue
	ready   readyHeap[T]        // guarded by mu
	waiting map[string]*fifo[T] // guarded by mu; nil value: no items behind the key
	spare   []*fifo[T]          // guarded by mu; emptied FIFOs, reused to spare the allocator
	queued  int                 // guarded by mu; ready + waiting: accepted but not started
	seq     uint64              // guarded by mu; next arrival number
	closed  bool                // guarded by mu; the inlet is closed: no more adds
	drain   bool                // guarded by mu; the run is cancelled: nothing more starts
}

func newScheduler[T any](ctx context.Context, bound int) *scheduler[T] {
	s := &scheduler[T]{ctx: ctx, bound: bound, waiting: map[string]*fifo[T]{}}
	s.work.L = &s.mu
	s.room.L = &s.mu
	return s
}

// draining reports whether the run is cancelled. The first time it sees the cancellation it
// drops every item not yet started and wakes the dispatcher, which then reads (and discards)
// freely so that upstream can finish. Nobody needs to wake for the cancellation itself: the
// dispatcher and the workers check it whenever they touch the queue, and whichever of them
// could be waiting is woken by the other (a full queue implies workers running items; idle
// workers are woken when the inlet closes). Called with mu held.
func (s *scheduler[T]) draining() bool {
	if !s.drain && s.ctx.Err() != nil {
		s.drain = true
		s.ready, s.waiting, s.spare, s.queued = nil, nil, nil, 0
		s.room.Signal()
	}
	return s.drain
}

// put queues env behind its key, or makes it ready if the key is idle, and then blocks until
// the queue has room for another item. Waiting after queuing, rather than holding an item the
// queue cannot take, keeps the bound exact: an item is in the previous hop or in the queue.
func (s *scheduler[T]) put(env envelope[T]) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.draining() {
		return
	}
	it := queued[T]{seq: s.seq, env: env}
	s.seq++
	s.queued++
	q, busy := s.waiting[env.key]
	switch {
	case !busy:
		s.waiting[env.key] = nil
		s.ready.push(it)
		s.work.Signal()
	case q == nil:
		if k := len(s.spare); k > 0 {
			q, s.spare = s.spare[k-1], s.spare[:k-1]
		} else {
			q = new(fifo[T])
		}
		q.push(it)
		s.waiting[env.key] = q
	default:
		q.push(it)
	}
	for s.queued >= s.bound && !s.draining() {
		s.room.Wait()
	}
}

// close records that the inlet is closed and wakes idle workers so they can exit.
func (s *scheduler[T]) close() {
	s.mu.Lock()
	s.closed = true
	s.work.Broadcast()
	s.mu.Unlock()
}

// next is a worker's one call between items: if finished, it reports that the worker's
// previous item, of key done, is complete (its output already sent), releasing the key's next
// item; then it waits for a ready item and starts it. It returns false when the stage is
// done: the inlet is closed and nothing is queued.
//
// Releasing and taking happen under one lock, so with a single worker the oldest ready item is
// always the oldest accepted one: the stage is then strictly FIFO.
func (s *scheduler[T]) next(done string, finished bool) (envelope[T], bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if finished && !s.draining() {
		// A released item is pushed without a Signal: this worker takes an item below, so the
		// number of ready items nobody is woken for does not grow.
		if q := s.waiting[done]; q != nil && q.len() > 0 {
			s.ready.push(q.pop())
		} else {
			delete(s.waiting, done)
			if q != nil {
				s.spare = append(s.spare, q)
			}
		}
	}
	for {
		if len(s.ready) > 0 {
			it := s.ready.pop()
			if s.queued == s.bound {
				s.room.Signal()
			}
			s.queued--
			return it.env, true
		}
		if s.closed && s.queued == 0 {
			s.work.Broadcast() // the other idle workers exit too
			return envelope[T]{}, false
		}
		s.work.Wait()
		s.draining()
	}
}

// readyHeap is a binary min-heap of items ordered by arrival. Oldest-first means an item whose
// key was blocked starts before later arrivals of other keys, and with one worker the stage
// processes items exactly in arrival order.
type readyHeap[T any] []queued[T]

func (h *readyHeap[T]) push(it queued[T]) {
	*h = append(*h, it)
	s := *h
	for i := len(s) - 1; i > 0; {
		parent := (i - 1) / 2
		if s[parent].seq <= s[i].seq {
			break
		}
		s[parent], s[i] = s[i], s[parent]
		i = parent
	}
}

func (h *readyHeap[T]) pop() queued[T] {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s[last] = queued[T]{} // drop references for the GC
	s = s[:last]
	for i := 0; ; {
		m, l, r := i, 2*i+1, 2*i+2
		if l < len(s) && s[l].seq < s[m].seq {
			m = l
		}
		if r < len(s) && s[r].seq < s[m].seq {
			m = r
		}
		if m == i {
			break
		}
		s[i], s[m] = s[m], s[i]
		i = m
	}
	*h = s
	return top
}

// fifo is a growable ring buffer of the items waiting behind one key.
type fifo[T any] struct {
	buf  []queued[T]
	head int
	n    int
}

func (q *fifo[T]) len() int { return q.n }

func (q *fifo[T]) push(it queued[T]) {
	if q.n == len(q.buf) {
		buf := make([]queued[T], max(4, 2*len(q.buf)))
		for i := range q.n {
			buf[i] = q.buf[(q.head+i)%len(q.buf)]
		}
		q.buf, q.head = buf, 0
	}
	q.buf[(q.head+q.n)%len(q.buf)] = it
	q.n++
}

func (q *fifo[T]) pop() queued[T] {
	it := q.buf[q.head]
	q.buf[q.head] = queued[T]{}
	q.head = (q.head + 1) % len(q.buf)
	q.n--
	return it
}
