package storage

import (
	"errors"
	"fmt"
	"sync"
)

// Manager is the KV cache manager: it answers prefix lookups over its tiers
// and hands out leases that pin the pages a request uses.
//
// This version manages one tier, the host tier; the lookup and the lease are
// the interface that the multi-tier hierarchy keeps.
type Manager struct {
	tier   Tier
	layers int
}

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	// Tier is where pages live.
	Tier Tier
	// Layers is the number of layers whose pages make up a cached block: a
	// block counts as cached only when every layer's page is present.
	Layers int
}

// NewManager returns a manager over o.Tier.
func NewManager(o ManagerOptions) (*Manager, error) {
	if o.Tier == nil {
		return nil, errors.New("kv manager: no tier")
	}
	if o.Layers <= 0 {
		return nil, fmt.Errorf("kv manager: %d layers: must be positive", o.Layers)
	}
	return &Manager{tier: o.Tier, layers: o.Layers}, nil
}

// Layers returns the number of layers per block.
func (m *Manager) Layers() int { return m.layers }

// Stats returns the counters of every tier, fastest first.
func (m *Manager) Stats() []TierStats { return []TierStats{m.tier.Stats()} }

// NewLease returns an empty lease for one request.
func (m *Manager) NewLease() *Lease { return &Lease{m: m} }

// Lease holds the pins of one request: the cached prefix it reuses and the
// pages it commits. Release returns them all. A Lease is safe for concurrent
// use.
type Lease struct {
	m *Manager

	mu   sync.Mutex
	keys []PageKey // pins held, in the order taken; guarded by mu
	done bool      // set by Release; guarded by mu
}

// ErrReleased is returned by a lease used after Release.
var ErrReleased = errors.New("lease released")

// AcquirePrefix pins the pages of the longest run of leading blocks of keys
// that are cached in every layer and returns them as pages[block][layer].
// The lookup stops at the first block missing a layer; none of that block's
// pages is pinned.
func (l *Lease) AcquirePrefix(keys []BlockKey) ([][]*Page, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, ErrReleased
	}
	var prefix [][]*Page
	row := make([]PageKey, l.m.layers)
	for _, k := range keys {
		for layer := range row {
			row[layer] = PageKey{Block: k, Layer: layer}
		}
		pages, ok := l.m.tier.PinAll(row)
		if !ok {
			break
		}
		l.keys = append(l.keys, row...)
		prefix = append(prefix, pages)
	}
	return prefix, nil
}

// Commit stores a completed page and keeps it pinned for the lease. If the
// tier already holds a page with the same key (another request computed the
// same prefix), that page is returned and pinned instead.
func (l *Lease) Commit(p *Page) (*Page, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil, ErrReleased
	}
	stored, err := l.m.tier.Put(p)
	if err != nil {
		return nil, err
	}
	l.keys = append(l.keys, stored.Key)
	return stored, nil
}

// Pins returns the number of pins the lease holds.
func (l *Lease) Pins() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.keys)
}

// Release unpins every page of the lease, last pinned first, so that a
// sequence's tail becomes colder than its head and is evicted first: the head
// is the prefix other requests are likeliest to share. Releasing twice is a
// no-op.
func (l *Lease) Release() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.done {
		return nil
	}
	l.done = true
	var errs []error
	for i := len(l.keys) - 1; i >= 0; i-- {
		if err := l.m.tier.Unpin(l.keys[i]); err != nil {
			errs = append(errs, err)
		}
	}
	l.keys = nil
	return errors.Join(errs...)
}
