package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func pk(b int) PageKey { return PageKey{Block: BlockKey(b), Layer: 0} }

// gatedLoader loads pages whose bytes name their key; the first load blocks
// until gate is closed, so tests can queue work behind it.
type gatedLoader struct {
	gate  chan struct{}
	mu    sync.Mutex
	order []PageKey
	calls atomic.Int64
}

func (g *gatedLoader) load(ctx context.Context, key PageKey) (*Page, error) {
	if g.calls.Add(1) == 1 {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	g.mu.Lock()
	g.order = append(g.order, key)
	g.mu.Unlock()
	return &Page{Key: key, K: []byte(key.String()), V: []byte{1}}, nil
}

func TestPrefetcherOrderAndMerge(t *testing.T) {
	g := &gatedLoader{gate: make(chan struct{})}
	p, err := NewPrefetcher(context.Background(), PrefetchOptions{Workers: 1, Load: g.load})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	first := p.Fetch(pk(0), PriorityNext)
	for g.calls.Load() == 0 {
		time.Sleep(time.Millisecond) // the worker holds the first load
	}
	// Queued behind it: lookahead first, then next, then now; and one
	// lookahead raised to now by a second request.
	la1 := p.Fetch(pk(1), PriorityLookahead)
	la2 := p.Fetch(pk(2), PriorityLookahead)
	nx := p.Fetch(pk(3), PriorityNext)
	now := p.Fetch(pk(4), PriorityNow)
	if again := p.Fetch(pk(2), PriorityNow); again != la2 {
		t.Fatal("a second fetch of a queued page started another load")
	}
	if again := p.Fetch(pk(0), PriorityNow); again != first {
		t.Fatal("a fetch of a running page started another load")
	}
	close(g.gate)
	for _, l := range []*Load{first, la1, la2, nx, now} {
		pg, err := l.Wait(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if string(pg.K) != l.Key.String() {
			t.Fatalf("load of %s returned page %q", l.Key, pg.K)
		}
	}
	// The raised load keeps its place among loads of its new priority:
	// it was asked for before pk(4).
	want := []PageKey{pk(0), pk(2), pk(4), pk(3), pk(1)}
	g.mu.Lock()
	defer g.mu.Unlock()
	if fmt.Sprint(g.order) != fmt.Sprint(want) {
		t.Fatalf("load order %v, want %v (raised and now in asking order, next, lookahead)", g.order, want)
	}
	s := p.Stats()
	if s.Issued != 5 || s.Merged != 2 || s.Raised != 1 || s.Completed != 5 || s.Failed != 0 {
		t.Fatalf("stats %+v", s)
	}
	if g.calls.Load() != 5 {
		t.Fatalf("%d loads ran, want 5", g.calls.Load())
	}
}

func TestPrefetcherCloseFailsQueued(t *testing.T) {
	g := &gatedLoader{gate: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	p, err := NewPrefetcher(ctx, PrefetchOptions{Workers: 1, Load: g.load})
	if err != nil {
		t.Fatal(err)
	}
	running := p.Fetch(pk(0), PriorityNow)
	for g.calls.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	queued := p.Fetch(pk(1), PriorityNow)
	cancel() // the running load sees ctx done; the queued one never runs
	if _, err := running.Wait(context.Background()); !errors.Is(err, context.Canceled) {
		t.Fatalf("running load: %v, want context.Canceled", err)
	}
	if _, err := queued.Wait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("queued load: %v, want ErrClosed", err)
	}
	p.Close()
	p.Close()
	if _, err := p.Fetch(pk(2), PriorityNow).Wait(context.Background()); !errors.Is(err, ErrClosed) {
		t.Fatalf("fetch after close: %v, want ErrClosed", err)
	}
	if g.calls.Load() != 1 {
		t.Fatalf("%d loads ran after cancel, want 1", g.calls.Load())
	}
}

func TestPrefetcherWaitContext(t *testing.T) {
	g := &gatedLoader{gate: make(chan struct{})}
	p, err := NewPrefetcher(context.Background(), PrefetchOptions{Workers: 1, Load: g.load})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	defer close(g.gate)
	l := p.Fetch(pk(0), PriorityNow)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
	defer cancel()
	if _, err := l.Wait(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait: %v, want the waiter's deadline", err)
	}
	if l.Ready() {
		t.Fatal("load ready while its loader is blocked")
	}
}

func TestPrefetcherBadOptions(t *testing.T) {
	if _, err := NewPrefetcher(context.Background(), PrefetchOptions{}); err == nil {
		t.Fatal("no load function: want an error")
	}
	if _, err := NewPrefetcher(context.Background(), PrefetchOptions{Workers: -1, Load: (&gatedLoader{}).load}); err == nil {
		t.Fatal("negative workers: want an error")
	}
}

// TestPrefetcherStress checks, under -race, that with many goroutines asking
// for overlapping pages at random priorities every load returns its own
// page, no page is loaded twice at once, and the counters add up.
func TestPrefetcherStress(t *testing.T) {
	var inflight sync.Map
	var dup atomic.Int64
	var loads atomic.Int64
	load := func(ctx context.Context, key PageKey) (*Page, error) {
		if _, loaded := inflight.LoadOrStore(key, true); loaded {
			dup.Add(1)
		}
		defer inflight.Delete(key)
		loads.Add(1)
		if key.Block%17 == 0 {
			return nil, fmt.Errorf("page %s: injected failure", key)
		}
		return &Page{Key: key, K: []byte(key.String())}, nil
	}
	p, err := NewPrefetcher(context.Background(), PrefetchOptions{Workers: 3, Load: load})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var asks atomic.Int64
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 1))
			for range 2000 {
				key := pk(r.IntN(64))
				asks.Add(1)
				l := p.Fetch(key, Priority(r.IntN(3)))
				pg, err := l.Wait(context.Background())
				switch {
				case key.Block%17 == 0:
					if err == nil {
						t.Errorf("page %s: want the injected failure", key)
					}
				case err != nil:
					t.Errorf("page %s: %v", key, err)
				case string(pg.K) != key.String():
					t.Errorf("page %s: got %q", key, pg.K)
				}
			}
		})
	}
	wg.Wait()
	p.Close()
	s := p.Stats()
	if dup.Load() != 0 {
		t.Fatalf("%d loads of a page ran while another was in flight", dup.Load())
	}
	if s.Issued+s.Merged != uint64(asks.Load()) || s.Completed+s.Failed != s.Issued || uint64(loads.Load()) != s.Issued {
		t.Fatalf("stats %+v for %d asks and %d loads", s, asks.Load(), loads.Load())
	}
}
