package storage

import (
	"container/list"
	"fmt"
	"sync"
)

// HostOptions configure a HostTier.
type HostOptions struct {
	// Capacity is the tier's size in bytes; it must be positive.
	Capacity int64
	// OnEvict, if set, receives every page the tier evicts, after it has left
	// the tier, so a manager can demote it a tier down. It is called with no
	// lock held, so it may call back into the tier.
	OnEvict func(*Page)
}

// HostTier keeps pages in process memory within a byte capacity and evicts
// unpinned pages least recently used first.
type HostTier struct {
	capacity int64
	onEvict  func(*Page)

	mu sync.Mutex
	// entries holds every stored page; guarded by mu.
	entries map[PageKey]*hostEntry
	// lru orders unpinned entries, most recently used at the front; pinned
	// entries are not in it, so eviction never has to skip them. Guarded by mu.
	lru   list.List
	stats TierStats // guarded by mu
}

type hostEntry struct {
	page *Page
	pins int
	elem *list.Element // position in lru while pins == 0
}

// NewHostTier returns an empty host tier.
func NewHostTier(o HostOptions) (*HostTier, error) {
	if o.Capacity <= 0 {
		return nil, fmt.Errorf("host tier: capacity %d bytes: must be positive", o.Capacity)
	}
	t := &HostTier{capacity: o.Capacity, onEvict: o.OnEvict, entries: make(map[PageKey]*hostEntry)}
	t.stats.Name = t.Name()
	t.stats.CapacityBytes = o.Capacity
	return t, nil
}

// Name returns "host".
func (t *HostTier) Name() string { return "host" }

// Put implements Tier.
func (t *HostTier) Put(p *Page) (*Page, error) {
	size := p.Size()
	if size > t.capacity {
		return nil, fmt.Errorf("host tier: page %s of %d bytes, capacity %d: %w", p.Key, size, t.capacity, ErrTooLarge)
	}
	t.mu.Lock()
	if e, ok := t.entries[p.Key]; ok {
		t.pinLocked(e)
		t.mu.Unlock()
		return e.page, nil
	}
	if t.stats.PinnedBytes+size > t.capacity {
		// Evicting every unpinned page would not make room: evict nothing.
		used, pinned := t.stats.UsedBytes, t.stats.PinnedBytes
		t.mu.Unlock()
		return nil, fmt.Errorf("host tier: page %s of %d bytes: %d of %d bytes used, %d pinned: %w",
			p.Key, size, used, t.capacity, pinned, ErrNoSpace)
	}
	var evicted []*Page
	for t.stats.UsedBytes+size > t.capacity {
		// Unpinned bytes suffice (checked above), so the list is not empty.
		e := t.lru.Back().Value.(*hostEntry)
		t.removeLocked(e)
		evicted = append(evicted, e.page)
	}
	e := &hostEntry{page: p}
	t.entries[p.Key] = e
	t.stats.UsedBytes += size
	t.stats.PeakBytes = max(t.stats.PeakBytes, t.stats.UsedBytes)
	t.stats.Pages++
	t.stats.PagesWritten++
	t.stats.BytesWritten += uint64(size)
	t.pinLocked(e)
	t.mu.Unlock()
	t.notify(evicted)
	return p, nil
}

// Pin implements Tier.
func (t *HostTier) Pin(key PageKey) (*Page, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[key]
	if !ok {
		t.stats.Misses++
		return nil, false
	}
	t.stats.Hits++
	t.stats.BytesRead += uint64(e.page.Size())
	t.pinLocked(e)
	return e.page, true
}

// PinAll implements Tier.
func (t *HostTier) PinAll(keys []PageKey) ([]*Page, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	missing := 0
	for _, k := range keys {
		if _, ok := t.entries[k]; !ok {
			missing++
		}
	}
	if missing > 0 {
		t.stats.Misses += uint64(missing)
		return nil, false
	}
	pages := make([]*Page, len(keys))
	for i, k := range keys {
		e := t.entries[k]
		t.stats.Hits++
		t.stats.BytesRead += uint64(e.page.Size())
		t.pinLocked(e)
		pages[i] = e.page
	}
	return pages, true
}

// Unpin implements Tier. The page becomes the most recently used.
func (t *HostTier) Unpin(key PageKey) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.entries[key]
	if !ok || e.pins == 0 {
		return fmt.Errorf("host tier: unpin %s: %w", key, ErrNotPinned)
	}
	e.pins--
	if e.pins == 0 {
		t.stats.PinnedBytes -= e.page.Size()
		e.elem = t.lru.PushFront(e)
	}
	return nil
}

// Stats implements Tier.
func (t *HostTier) Stats() TierStats {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stats
}

func (t *HostTier) pinLocked(e *hostEntry) {
	if e.pins == 0 {
		t.stats.PinnedBytes += e.page.Size()
		if e.elem != nil {
			t.lru.Remove(e.elem)
			e.elem = nil
		}
	}
	e.pins++
}

// removeLocked drops an unpinned entry.
func (t *HostTier) removeLocked(e *hostEntry) {
	t.lru.Remove(e.elem)
	e.elem = nil
	delete(t.entries, e.page.Key)
	size := e.page.Size()
	t.stats.UsedBytes -= size
	t.stats.Pages--
	t.stats.Evictions++
	t.stats.EvictedBytes += uint64(size)
}

func (t *HostTier) notify(evicted []*Page) {
	if t.onEvict == nil {
		return
	}
	for _, p := range evicted {
		t.onEvict(p)
	}
}
