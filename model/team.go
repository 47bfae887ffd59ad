package model

import (
	"runtime"
	"sync/atomic"
	"time"
)

// DefaultLinger is how long a Kernel's helper goroutines wait for the next
// call when Options.Linger is 0.
const DefaultLinger = time.Millisecond

// pollBatch is how many times an idle helper looks for a plan between
// looks at the clock and yields to the scheduler.
const pollBatch = 256

// team is a Kernel's helper goroutines. They outlive a call by a short
// spin, so that calls in quick succession (a decode step's layers, a
// benchmark's loop) find them running: a goroutine started on an idle core
// begins 70–100 µs later on a VM (0.9 ms at the 90th percentile), half as
// long as a decode call over a 1K context, and the caller meanwhile does
// the work alone.
//
// Helpers join whichever plan of their kernel was published last; a
// plan's caller works its items too and never waits for a helper to
// arrive.
type team struct {
	linger time.Duration // how long an idle helper spins before it exits

	job  atomic.Pointer[plan] // the plan helpers join; closed ones are passed over
	live atomic.Int32         // helpers running
	// joins counts the plans helpers entered, for tests.
	joins atomic.Int64
}

// call publishes p, opened, to the helpers and makes sure that want of
// them are running.
func (t *team) call(p *plan, want int) {
	t.job.Store(p)
	for {
		n := t.live.Load()
		if int(n) >= want {
			return
		}
		if t.live.CompareAndSwap(n, n+1) {
			go t.help()
		}
	}
}

// help joins each plan published while it runs, once per opening, and
// exits after linger without one.
func (t *team) help() {
	var (
		seen *plan
		gen  uint64
	)
	// try joins the published plan if there is one new to this helper.
	try := func() bool {
		p := t.job.Load()
		if p == nil {
			return false
		}
		skip := uint64(0) // no opening is numbered 0
		if p == seen {
			skip = gen
		}
		g, ok := p.join(skip)
		if ok {
			t.joins.Add(1)
			seen, gen = p, g
			p.work()
			p.leave()
		}
		return ok
	}
	idle := time.Now()
	for poll := 1; ; poll++ {
		if try() {
			idle = time.Now()
			continue
		}
		// The clock and the scheduler are looked at once every
		// pollBatch polls (a few µs): a poll is two atomic loads,
		// a look at the clock costs tens of them, and Gosched takes
		// the scheduler's global lock.
		if poll%pollBatch != 0 {
			continue
		}
		if time.Since(idle) >= t.linger {
			// A call that counted this helper before it left, and so
			// started none, published its plan before counting: it
			// is seen here (the atomics are sequentially consistent).
			t.live.Add(-1)
			if !try() {
				return
			}
			t.live.Add(1)
			idle = time.Now()
			continue
		}
		// Lets any other goroutine of this P run: the spin only takes
		// time nothing else wants.
		runtime.Gosched()
	}
}

// gate is the state helpers join a plan by: bits 0-30 count the helpers
// inside, bit 31 is set while the plan is open, bits 32-63 number the
// openings so that a helper joins each one at most once. The zero value is
// closed.
type gate struct{ state atomic.Uint64 }

const (
	gateOpen = 1 << 31
	gateGen  = 1 << 32
)

// open lets helpers in. The plan must be fully built: joining orders a
// helper's reads after it.
func (g *gate) open() {
	for {
		s := g.state.Load() // closed
		n := s + gateGen
		if n < gateGen {
			n += gateGen // the numbers wrap past 0, which is no opening's
		}
		if g.state.CompareAndSwap(s, n|gateOpen) {
			return
		}
	}
}

// join enters the gate if it is open, unless in opening skip (one the
// caller already took part in), and returns the opening's number.
func (g *gate) join(skip uint64) (uint64, bool) {
	for {
		s := g.state.Load()
		n := s / gateGen
		if s&gateOpen == 0 || n == skip {
			return 0, false
		}
		if g.state.CompareAndSwap(s, s+1) {
			return n, true
		}
	}
}

// leave exits a gate joined.
func (g *gate) leave() { g.state.Add(^uint64(0)) }

// close shuts the gate and waits for the helpers inside to leave: each is
// at most one item from done, since the caller took the last.
func (g *gate) close() {
	for {
		s := g.state.Load()
		if g.state.CompareAndSwap(s, s&^gateOpen) {
			break
		}
	}
	for g.state.Load()&(gateOpen-1) != 0 {
		runtime.Gosched()
	}
}
