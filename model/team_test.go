package model

import (
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestGate checks the gate helpers join a plan by: closed at first, open
// to each helper once per opening, and close waiting for those inside.
func TestGate(t *testing.T) {
	var g gate
	if _, ok := g.join(0); ok {
		t.Fatal("joined a gate never opened")
	}
	g.open()
	n, ok := g.join(0)
	if !ok {
		t.Fatal("could not join an open gate")
	}
	if _, ok := g.join(n); ok {
		t.Fatal("joined the same opening twice")
	}
	var closed atomic.Bool
	go func() {
		g.close()
		closed.Store(true)
	}()
	time.Sleep(20 * time.Millisecond)
	if closed.Load() {
		t.Fatal("close returned with a helper inside")
	}
	g.leave()
	for !closed.Load() {
		time.Sleep(time.Millisecond)
	}
	if _, ok := g.join(0); ok {
		t.Fatal("joined a closed gate")
	}
	g.open()
	m, ok := g.join(n)
	if !ok || m == n {
		t.Fatalf("next opening: joined %v as %d, the last was %d", ok, m, n)
	}
	g.leave()
	g.close()
}

// TestTeamConcurrentCalls runs many goroutines' calls through one kernel
// whose helpers linger: every result must equal the same kernel's result
// alone (the plan, and so the float order, depends only on the call), the
// helpers must have joined calls, and they must all exit after the last.
func TestTeamConcurrentCalls(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 11))
	c := attendCases[2]
	k, err := NewKernel(c.config(), Options{Workers: 4, Linger: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	const callers = 6
	qs := make([]Query, callers)
	want := make([][]float32, callers)
	for i := range qs {
		c.start = 1000 + 97*i // pages enough to split among workers
		qs[i], _ = kernelInput(t, c, rng)
		if err := k.Attend(qs[i]); err != nil {
			t.Fatal(err)
		}
		want[i] = slices.Clone(qs[i].Out)
	}
	rounds := 40
	if raceEnabled {
		rounds = 10
	}
	var wg sync.WaitGroup
	for i := range qs {
		wg.Go(func() {
			q := qs[i]
			q.Out = make([]float32, len(q.Out))
			for r := range rounds {
				clear(q.Out)
				if err := k.Attend(q); err != nil {
					t.Error(err)
					return
				}
				if !slices.Equal(q.Out, want[i]) {
					t.Errorf("caller %d round %d: result differs from the call alone", i, r)
					return
				}
			}
		})
	}
	wg.Wait()
	// With one P a caller never yields while its plan is open.
	if k.team.joins.Load() == 0 && runtime.GOMAXPROCS(0) > 1 {
		t.Error("no helper joined any call")
	}
	waitNoHelpers(t, k)
}

// TestTeamLinger: helpers outlive a call by Linger, then exit; with a
// negative Linger they exit once the call is done.
func TestTeamLinger(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 12))
	c := attendCases[2]
	c.start = 1000 // pages enough to split among workers
	q, _ := kernelInput(t, c, rng)
	for _, linger := range []time.Duration{-1, 300 * time.Millisecond} {
		k, err := NewKernel(c.config(), Options{Workers: 2, Linger: linger})
		if err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		if err := k.Attend(q); err != nil {
			t.Fatal(err)
		}
		if linger > 0 {
			// The helper started for the call is waiting for the next.
			if n := k.team.live.Load(); n != 1 {
				t.Errorf("linger %v: %d helpers right after the call, want 1", linger, n)
			}
		}
		waitNoHelpers(t, k)
		// The helper's idle time starts after the call did.
		if el := time.Since(start); linger > 0 && el < linger {
			t.Errorf("helper exited %v after the call began, before its linger of %v", el, linger)
		}
	}
}

// TestTeamOwnKernel: one kernel's lingering helpers never join another
// kernel's calls (one kernel per layer is the pipeline's pattern), whose
// plans come from the other kernel's own pool.
func TestTeamOwnKernel(t *testing.T) {
	rng := rand.New(rand.NewPCG(runSeed(t), 13))
	c := attendCases[2]
	c.start = 1000 // pages enough to split among workers
	q, _ := kernelInput(t, c, rng)
	a, errA := NewKernel(c.config(), Options{Workers: 2, Linger: time.Second})
	b, errB := NewKernel(c.config(), Options{Workers: 2, Linger: -1})
	if errA != nil || errB != nil {
		t.Fatal(errA, errB)
	}
	if err := a.Attend(q); err != nil {
		t.Fatal(err)
	}
	joined := a.team.joins.Load()
	for start := time.Now(); time.Since(start) < 200*time.Millisecond; {
		if err := b.Attend(q); err != nil {
			t.Fatal(err)
		}
	}
	if n := a.team.joins.Load() - joined; n != 0 {
		t.Errorf("kernel a's helpers joined %d of kernel b's calls", n)
	}
	if a.team.live.Load() == 0 {
		t.Error("kernel a's helper left before its linger: the check above proves nothing")
	}
	waitNoHelpers(t, a)
	waitNoHelpers(t, b)
}

// waitNoHelpers fails t unless k's helpers have all exited within a few
// seconds.
func waitNoHelpers(t *testing.T, k *Kernel) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for k.team.live.Load() != 0 {
		if time.Now().After(deadline) {
			t.Fatalf("%d helpers still running", k.team.live.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
