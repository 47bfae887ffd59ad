package pipeline_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the binary if any test leaves a goroutine behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// item is the test payload: the seq-th item of key.
type item struct {
	key string
	seq int
}

func (it item) String() string { return fmt.Sprintf("%s#%d", it.key, it.seq) }

func keyOf(it item) string { return it.key }

// roundRobin emits per items for each of nkeys keys, interleaving the keys.
func roundRobin(nkeys, per int) func(context.Context, func(item) error) error {
	return func(_ context.Context, emit func(item) error) error {
		for s := range per {
			for k := range nkeys {
				if err := emit(item{key: fmt.Sprintf("k%d", k), seq: s}); err != nil {
					return err
				}
			}
		}
		return nil
	}
}

// orderCheck verifies the Stage contract from inside Process: items of a key arrive in seq
// order, starting at 0, and never two at once.
type orderCheck struct {
	mu       sync.Mutex
	next     map[string]int  // next expected seq per key
	inflight map[string]bool // key is inside Process
	bad      []string        // violations
}

func newOrderCheck() *orderCheck {
	return &orderCheck{next: map[string]int{}, inflight: map[string]bool{}}
}

func (c *orderCheck) enter(it item) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.inflight[it.key] {
		c.bad = append(c.bad, fmt.Sprintf("%v: key already in Process", it))
	}
	c.inflight[it.key] = true
	if want := c.next[it.key]; it.seq != want {
		c.bad = append(c.bad, fmt.Sprintf("%v: want seq %d", it, want))
	}
	c.next[it.key] = it.seq + 1
}

func (c *orderCheck) leave(it item) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inflight[it.key] = false
}

func (c *orderCheck) verify(t *testing.T, name string) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, b := range c.bad {
		if i == 10 {
			t.Errorf("%s: ... %d violations in all", name, len(c.bad))
			break
		}
		t.Errorf("%s: %s", name, b)
	}
}

// collector is a sink that records arrivals and checks per-key order.
type collector struct {
	check *orderCheck
	mu    sync.Mutex
	all   []item
}

func newCollector() *collector { return &collector{check: newOrderCheck()} }

func (c *collector) sink(_ context.Context, it item) error {
	c.check.enter(it)
	c.check.leave(it)
	c.mu.Lock()
	c.all = append(c.all, it)
	c.mu.Unlock()
	return nil
}

func (c *collector) items() []item {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]item(nil), c.all...)
}
