package storage

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
)

// HostOptions configure a HostTier.
type HostOptions struct {
	// Capacity is the tier's size in bytes; it must be positive. Pages take
	// buddy blocks: a page of K and V whose size is not a power of two
	// occupies the next power of two.
	Capacity int64
	// OnEvict, if set, receives every page the tier evicts, with no lock
	// held, so a manager can demote it a tier down. The page's bytes are
	// the tier's arena memory and are reused once OnEvict returns: copy
	// what must outlive the call.
	OnEvict func(*Page)
	// MinBlock is the arena's smallest block (a power of two from 64);
	// default 4096. The allocator keeps 4 bytes of metadata per MinBlock,
	// so large tiers want it no smaller than their pages.
	MinBlock int64
}

// HostTier keeps pages in host memory: their bytes live in one arena managed
// by a buddy allocator, and a block cache holds the index, the pins and the
// LRU order in which unpinned pages are evicted.
//
// A page occupies a buddy block, the next power of two of its size, and the
// tier's byte counts of use (UsedBytes, PeakBytes, PinnedBytes,
// EvictedBytes) are of blocks; BytesRead and BytesWritten are of pages. The
// arena is the capacity rounded up to a power of two; the cache keeps what is
// stored within the capacity. With pages of one size (kvflow's case) a Put
// that fails evicts nothing; with mixed sizes, pinned blocks can fragment
// the arena so that a Put evicts unpinned pages and still fails.
type HostTier struct {
	capacity int64
	minBlock int64
	arena    *Arena
	cache    *Cache[PageKey, *hostPage]
	onEvict  func(*Page)

	// putMu serializes Put's evict-then-allocate sequence so that room made
	// for one page is not taken by another; lookups do not take it.
	putMu sync.Mutex

	hits, misses, bytesRead, bytesWritten, pagesWritten atomic.Uint64
	peak                                                atomic.Int64
}

// hostPage is a cached page and the arena block holding its bytes.
type hostPage struct {
	page *Page
	off  int64
}

// NewHostTier returns an empty host tier.
func NewHostTier(o HostOptions) (*HostTier, error) {
	if o.Capacity <= 0 {
		return nil, fmt.Errorf("host tier: capacity %d bytes: must be positive", o.Capacity)
	}
	if o.MinBlock == 0 {
		o.MinBlock = 4096
	}
	arena, err := NewArena(ArenaOptions{Size: o.Capacity, MinBlock: o.MinBlock})
	if err != nil {
		return nil, fmt.Errorf("host tier: %w", err)
	}
	t := &HostTier{capacity: o.Capacity, arena: arena, onEvict: o.OnEvict, minBlock: o.MinBlock}
	t.cache, err = NewCache(CacheOptions[PageKey, *hostPage]{
		Capacity: o.Capacity,
		// One shard keeps the LRU order exact across all pages, which
		// release's tail-first order relies on. A tier sees one operation
		// per page, not per token, so one lock is not its bottleneck.
		Shards:  1,
		Hash:    hashPageKey,
		OnEvict: t.evicted,
	})
	if err != nil {
		return nil, fmt.Errorf("host tier: %w", err)
	}
	return t, nil
}

// hashPageKey mixes a page key: block keys are already uniform hashes.
func hashPageKey(k PageKey) uint64 {
	return uint64(k.Block) ^ uint64(k.Layer+1)*0x9e3779b97f4a7c15
}

// settleEvictions waits until no Put is evicting: Put holds putMu through
// its evictions and their OnEvict calls, so a page it evicted has by then
// been handed on (a demotion to the store is registered).
func (t *HostTier) settleEvictions() {
	t.putMu.Lock()
	t.putMu.Unlock() //nolint:staticcheck // an empty critical section: a barrier
}

// Memory returns the memory the tier's pages live in (its arena), for
// registering with a device's DMA engines.
func (t *HostTier) Memory() []byte { return t.arena.Memory() }

// evicted frees an evicted page's block after handing the page on.
func (t *HostTier) evicted(_ PageKey, hp *hostPage) {
	if t.onEvict != nil {
		t.onEvict(hp.page)
	}
	// The block was handed out by this arena and freed only here.
	_ = t.arena.Free(hp.off)
}

// Name returns "host".
func (t *HostTier) Name() string { return "host" }

// Put implements Tier: it copies p's bytes into the arena.
func (t *HostTier) Put(p *Page) (*Page, error) {
	size := p.Size()
	if t.blockSize(size) > t.capacity {
		return nil, fmt.Errorf("host tier: page %s of %d bytes (a %d-byte block), capacity %d: %w",
			p.Key, size, t.blockSize(size), t.capacity, ErrTooLarge)
	}
	// A block no eviction can make room for must not cost any page.
	if block := t.blockSize(size); t.cache.Stats().PinnedWeight+block > t.capacity {
		s := t.cache.Stats()
		return nil, fmt.Errorf("host tier: page %s of %d bytes: %d of %d bytes used, %d pinned: %w",
			p.Key, size, s.Weight, t.capacity, s.PinnedWeight, ErrNoSpace)
	}
	t.putMu.Lock()
	defer t.putMu.Unlock()
	blk, err := t.alloc(size)
	if err != nil {
		return nil, fmt.Errorf("host tier: page %s of %d bytes: %w", p.Key, size, err)
	}
	nk := copy(blk.Bytes, p.K)
	copy(blk.Bytes[nk:], p.V)
	hp := &hostPage{page: &Page{Key: p.Key, K: blk.Bytes[:nk:nk], V: blk.Bytes[nk:size:size]}, off: blk.Off}
	stored, inserted, err := t.cache.Add(p.Key, hp, blk.Size, true)
	if err != nil || !inserted {
		_ = t.arena.Free(blk.Off)
		if err != nil {
			return nil, fmt.Errorf("host tier: page %s: %w", p.Key, err)
		}
		return stored.page, nil
	}
	t.pagesWritten.Add(1)
	t.bytesWritten.Add(uint64(size))
	if w := t.cache.Stats().Weight; w > t.peak.Load() {
		t.peak.Store(w)
	}
	return hp.page, nil
}

// blockSize is the buddy block a page of n bytes occupies.
func (t *HostTier) blockSize(n int64) int64 {
	b := t.minBlock
	for b < n {
		b <<= 1
	}
	return b
}

// alloc takes an arena block of n bytes, evicting unpinned pages while the
// arena is full. Called with putMu held.
func (t *HostTier) alloc(n int64) (Block, error) {
	for {
		blk, err := t.arena.Alloc(n)
		if err == nil {
			return blk, nil
		}
		if !errors.Is(err, ErrOutOfMemory) {
			return Block{}, err
		}
		if !t.cache.EvictOne() {
			s := t.cache.Stats()
			return Block{}, fmt.Errorf("%d of %d bytes used, %d pinned: %w", s.Weight, t.capacity, s.PinnedWeight, ErrNoSpace)
		}
	}
}

// Pin implements Tier.
func (t *HostTier) Pin(key PageKey) (*Page, bool) {
	hp, ok := t.cache.Pin(key)
	if !ok {
		t.misses.Add(1)
		return nil, false
	}
	t.hits.Add(1)
	t.bytesRead.Add(uint64(hp.page.Size()))
	return hp.page, true
}

// Range implements Tier. Each page is pinned while fn sees it.
func (t *HostTier) Range(fn func(*Page) bool) {
	for _, k := range t.cache.Keys() {
		hp, ok := t.cache.Pin(k)
		if !ok {
			continue // evicted since the snapshot
		}
		more := fn(hp.page)
		_ = t.cache.Unpin(k) // pinned just above
		if !more {
			return
		}
	}
}

// Contains implements Tier.
func (t *HostTier) Contains(key PageKey) bool { return t.cache.Contains(key) }

// PinAll implements Tier.
func (t *HostTier) PinAll(keys []PageKey) ([]*Page, bool) {
	missing := 0
	for _, k := range keys {
		if !t.cache.Contains(k) {
			missing++
		}
	}
	if missing > 0 {
		t.misses.Add(uint64(missing))
		return nil, false
	}
	pages := make([]*Page, 0, len(keys))
	for _, k := range keys {
		hp, ok := t.cache.Pin(k)
		if !ok {
			// Evicted since Contains: give back what was taken.
			for _, p := range pages {
				_ = t.cache.Unpin(p.Key)
			}
			t.misses.Add(1)
			return nil, false
		}
		pages = append(pages, hp.page)
	}
	var read uint64
	for _, p := range pages {
		read += uint64(p.Size())
	}
	t.hits.Add(uint64(len(pages)))
	t.bytesRead.Add(read)
	return pages, true
}

// Unpin implements Tier. The page becomes the most recently used.
func (t *HostTier) Unpin(key PageKey) error {
	if err := t.cache.Unpin(key); err != nil {
		return fmt.Errorf("host tier: unpin %s: %w", key, err)
	}
	return nil
}

// Stats implements Tier.
func (t *HostTier) Stats() TierStats {
	c := t.cache.Stats()
	return TierStats{
		Name:          t.Name(),
		CapacityBytes: t.capacity,
		UsedBytes:     c.Weight,
		PeakBytes:     max(t.peak.Load(), c.Weight),
		PinnedBytes:   c.PinnedWeight,
		Pages:         c.Entries,
		Hits:          t.hits.Load(),
		Misses:        t.misses.Load(),
		BytesRead:     t.bytesRead.Load(),
		BytesWritten:  t.bytesWritten.Load(),
		PagesWritten:  t.pagesWritten.Load(),
		Evictions:     c.Evictions,
		EvictedBytes:  c.EvictedWeight,
	}
}

// Arena returns the statistics of the tier's arena.
func (t *HostTier) Arena() BuddyStats { return t.arena.Stats() }
