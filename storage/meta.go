package storage

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
)

// Unlimited is the capacity of a tier with no bound (metadata-only runs,
// where an ideal cache is the question).
const Unlimited int64 = math.MaxInt64 / 4

// metaIndex is the index of a tier that keeps no bytes: a block cache of
// page sizes, with the cache's pins, capacity and LRU order. It backs
// MetaTier and MetaStore, which make the decisions of the host and ssd tiers
// for pages that are only sizes. A zero capacity holds nothing (a disabled
// tier).
type metaIndex struct {
	name     string
	capacity int64
	cache    *Cache[PageKey, *Page] // nil when capacity is 0
	onEvict  func(*Page)
	// addMu is held by add through the evictions it causes and their
	// onEvict calls, so settle can wait them out.
	addMu sync.Mutex

	hits, misses, bytesRead, bytesWritten, pagesWritten atomic.Uint64
	peak                                                atomic.Int64
}

func newMetaIndex(name string, capacity int64, onEvict func(*Page)) (*metaIndex, error) {
	if capacity < 0 {
		return nil, fmt.Errorf("%s tier: capacity %d bytes: must not be negative", name, capacity)
	}
	m := &metaIndex{name: name, capacity: capacity, onEvict: onEvict}
	if capacity == 0 {
		return m, nil
	}
	var err error
	m.cache, err = NewCache(CacheOptions[PageKey, *Page]{
		Capacity: capacity,
		Shards:   1, // exact LRU, as the host tier
		Hash:     hashPageKey,
		OnEvict: func(_ PageKey, p *Page) {
			if m.onEvict != nil {
				m.onEvict(p)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("%s tier: %w", name, err)
	}
	return m, nil
}

// add stores a size-only copy of p, pinned or not.
func (m *metaIndex) add(p *Page, pin bool) (*Page, error) {
	size := p.Size()
	if m.cache == nil || size > m.capacity {
		return nil, fmt.Errorf("%s tier: page %s of %d bytes, capacity %d: %w", m.name, p.Key, size, m.capacity, ErrTooLarge)
	}
	meta := &Page{Key: p.Key, Meta: size}
	m.addMu.Lock()
	stored, inserted, err := m.cache.Add(p.Key, meta, size, pin)
	m.addMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("%s tier: page %s: %w", m.name, p.Key, err)
	}
	if inserted {
		m.pagesWritten.Add(1)
		m.bytesWritten.Add(uint64(size))
		if w := m.cache.Stats().Weight; w > m.peak.Load() {
			m.peak.Store(w)
		}
	}
	return stored, nil
}

func (m *metaIndex) pin(key PageKey) (*Page, bool) {
	if m.cache == nil {
		return nil, false
	}
	return m.cache.Pin(key)
}

func (m *metaIndex) contains(key PageKey) bool { return m.cache != nil && m.cache.Contains(key) }

func (m *metaIndex) unpin(key PageKey) error {
	if m.cache == nil {
		return fmt.Errorf("%s tier: unpin %s: %w", m.name, key, ErrNotPinned)
	}
	if err := m.cache.Unpin(key); err != nil {
		if errors.Is(err, ErrNotFound) {
			err = ErrNotPinned
		}
		return fmt.Errorf("%s tier: unpin %s: %w", m.name, key, err)
	}
	return nil
}

func (m *metaIndex) stats() TierStats {
	s := TierStats{Name: m.name, CapacityBytes: m.capacity, Hits: m.hits.Load(), Misses: m.misses.Load(),
		BytesRead: m.bytesRead.Load(), BytesWritten: m.bytesWritten.Load(), PagesWritten: m.pagesWritten.Load()}
	if m.cache != nil {
		c := m.cache.Stats()
		s.UsedBytes, s.PinnedBytes, s.Pages = c.Weight, c.PinnedWeight, c.Entries
		s.PeakBytes = max(m.peak.Load(), c.Weight)
		s.Evictions, s.EvictedBytes = c.Evictions, c.EvictedWeight
	}
	return s
}

// MetaTier is a memory tier of pages without bytes: the host tier's
// decisions (capacity, pins, LRU eviction) for a metadata-only run. Pages
// put into it are recorded by key and size. It is safe for concurrent use.
type MetaTier struct{ m *metaIndex }

var _ Tier = (*MetaTier)(nil)

// NewMetaTier returns a metadata tier named name of capacity bytes (0: a
// disabled tier that stores nothing; Unlimited: no bound). Evicted pages go
// to onEvict, if set.
func NewMetaTier(name string, capacity int64, onEvict func(*Page)) (*MetaTier, error) {
	m, err := newMetaIndex(name, capacity, onEvict)
	if err != nil {
		return nil, err
	}
	return &MetaTier{m: m}, nil
}

// Name implements Tier.
func (t *MetaTier) Name() string { return t.m.name }

// Put implements Tier.
func (t *MetaTier) Put(p *Page) (*Page, error) { return t.m.add(p, true) }

// settleEvictions waits until no Put is evicting: a page it evicted has by
// then been handed to onEvict (a demotion to the store is registered).
func (t *MetaTier) settleEvictions() {
	t.m.addMu.Lock()
	t.m.addMu.Unlock() //nolint:staticcheck // an empty critical section: a barrier
}

// Pin implements Tier.
func (t *MetaTier) Pin(key PageKey) (*Page, bool) {
	p, ok := t.m.pin(key)
	if !ok {
		t.m.misses.Add(1)
		return nil, false
	}
	t.m.hits.Add(1)
	t.m.bytesRead.Add(uint64(p.Size()))
	return p, true
}

// Contains implements Tier.
func (t *MetaTier) Contains(key PageKey) bool { return t.m.contains(key) }

// Range implements Tier.
func (t *MetaTier) Range(fn func(*Page) bool) {
	if t.m.cache == nil {
		return
	}
	for _, k := range t.m.cache.Keys() {
		if p, ok := t.m.cache.Get(k); ok && !fn(p) {
			return
		}
	}
}

// PinAll implements Tier.
func (t *MetaTier) PinAll(keys []PageKey) ([]*Page, bool) {
	pages := make([]*Page, 0, len(keys))
	for _, k := range keys {
		p, ok := t.m.pin(k)
		if !ok {
			for _, q := range pages {
				_ = t.m.unpin(q.Key)
			}
			t.m.misses.Add(1)
			return nil, false
		}
		pages = append(pages, p)
	}
	t.m.hits.Add(uint64(len(pages)))
	return pages, true
}

// Unpin implements Tier.
func (t *MetaTier) Unpin(key PageKey) error { return t.m.unpin(key) }

// Stats implements Tier.
func (t *MetaTier) Stats() TierStats { return t.m.stats() }

// MetaStore is a lower tier of pages without bytes: the ssd tier's
// decisions for a metadata-only run. Reads return size-only pages and never
// fail a checksum. It is safe for concurrent use.
type MetaStore struct{ m *metaIndex }

var _ Store = (*MetaStore)(nil)

// NewMetaStore returns a metadata store named name of capacity bytes.
func NewMetaStore(name string, capacity int64) (*MetaStore, error) {
	m, err := newMetaIndex(name, capacity, nil)
	if err != nil {
		return nil, err
	}
	return &MetaStore{m: m}, nil
}

// Name implements Store.
func (s *MetaStore) Name() string { return s.m.name }

// Write implements Store.
func (s *MetaStore) Write(p *Page) error {
	_, err := s.m.add(p, false)
	return err
}

// Contains implements Store.
func (s *MetaStore) Contains(key PageKey) bool { return s.m.contains(key) }

// Pin implements Store.
func (s *MetaStore) Pin(key PageKey) bool {
	_, ok := s.m.pin(key)
	return ok
}

// Unpin implements Store.
func (s *MetaStore) Unpin(key PageKey) error { return s.m.unpin(key) }

// Read implements Store: the page's key and size.
func (s *MetaStore) Read(key PageKey, _ []byte) (*Page, error) {
	if s.m.cache == nil {
		s.m.misses.Add(1)
		return nil, fmt.Errorf("%s tier: read %s: %w", s.m.name, key, ErrNotFound)
	}
	p, ok := s.m.cache.Get(key)
	if !ok {
		s.m.misses.Add(1)
		return nil, fmt.Errorf("%s tier: read %s: %w", s.m.name, key, ErrNotFound)
	}
	s.m.hits.Add(1)
	s.m.bytesRead.Add(uint64(p.Size()))
	return &Page{Key: key, Meta: p.Meta}, nil
}

// Stats implements Store.
func (s *MetaStore) Stats() TierStats { return s.m.stats() }

// Close implements Store; a metadata store keeps nothing past the run.
func (s *MetaStore) Close() error { return nil }
