package storage

import (
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
)

// Errors returned by Cache.Remove.
var (
	// ErrPinned means an entry cannot be removed because it holds pins.
	ErrPinned = errors.New("entry pinned")
	// ErrNotFound means the cache holds no entry under the key.
	ErrNotFound = errors.New("entry not found")
)

const (
	// shardsPerProc sets the default shard count. Gets take no lock, so
	// shards only spread the writers (Add, Pin, Unpin, Remove, and the hits
	// Get passes to the policy when a lock is free): on 2 cores,
	// benchmarks/cache_test.go runs as fast with 4 shards as with 256
	// (within the machine's noise), and 8 per core leaves the policies few
	// hits to buffer or drop.
	shardsPerProc = 8
	// maxShards bounds the shard count: more only cost memory and make the
	// all-shard paths (Stats, Len, the exact ErrNoSpace check) slower.
	maxShards = 1 << 16
	// touchBuffer is how many hits a shard keeps for its policy while its
	// lock is busy; hits beyond it are not passed on (see Policy).
	touchBuffer = 32
)

// CacheOptions configure a Cache.
type CacheOptions[K comparable, V any] struct {
	// Capacity is the total weight the cache may hold; it must be positive.
	// It is global and exact: the sum of the weights of the stored entries
	// never exceeds it, however they fall into shards.
	Capacity int64
	// Shards is the number of independently locked shards, rounded up to a
	// power of two. The default is 8 × GOMAXPROCS, or Capacity if that is
	// less (a cache of a few units gains nothing from more locks), rounded
	// up the same way.
	Shards int
	// Hash hashes keys to pick their shard and their slot in it. The cache
	// scrambles the result (Fibonacci hashing), so any injective function
	// does, the identity on integer keys included. The default is
	// hash/maphash.Comparable with a random seed.
	Hash func(K) uint64
	// Policy returns a new eviction policy; each shard calls it once. The
	// default is NewLRU.
	Policy func() Policy[K]
	// OnEvict, if set, receives every entry the cache evicts, once, after the
	// entry has left the cache. It is called with no lock held, so it may
	// call back into the cache (to demote the entry a tier down, say).
	// Remove does not call it.
	OnEvict func(K, V)
}

// CacheStats are a snapshot of a Cache's counters. The weights and Entries
// are consistent with each other; the hit counts are read at the same time
// but Gets do not wait for the snapshot.
type CacheStats struct {
	// Capacity is CacheOptions.Capacity.
	Capacity int64
	// Weight and PinnedWeight are the total weight of the stored and of the
	// pinned entries; Entries is how many entries are stored.
	Weight, PinnedWeight, Entries int64
	// Hits and Misses count the lookups of Get and Pin.
	Hits, Misses uint64
	// Evictions and EvictedWeight count the entries evicted to make room and
	// their total weight (Remove is not eviction).
	Evictions, EvictedWeight uint64
}

// Cache is a weighted cache with reference counts (pins). Pinned entries are
// never evicted; unpinned entries are evicted in the order of a Policy, least
// recently used first by default (up to the order within each shard's most
// recent eighth, see Policy), when an Add needs room. Weights are in any unit
// (bytes for pages); the capacity bounds their sum exactly.
//
// A Cache is safe for concurrent use and built so that lookups scale with
// cores. It is split into shards by key hash. Get and Contains take no lock:
// each shard's index is a hash table that writers change with atomic
// stores, entries are immutable once published, and a hit reaches the
// policy, under the shard's lock, only if it changes more than the most
// recent eighth of the order and then only if the lock is free at once
// (otherwise through a small buffer that the next lock holder drains), so
// readers never wait. Writers take their shard's lock; one atomic counter of the weight in
// use keeps the capacity global. An Add makes room from its own shard when it
// can, which is nearly always, otherwise takes victims from the other shards
// one lock at a time, and locks every shard only to decide exactly that the
// rest of the capacity is pinned.
type Cache[K comparable, V any] struct {
	capacity  int64
	hash      func(K) uint64
	shardBits uint // log2(len(shards))
	onEvict   func(K, V)
	shards    []cacheShard[K, V]

	// used is the weight stored plus the weight that Adds in flight have
	// reserved, or evicted and not yet taken or given back; it never exceeds
	// capacity. Every change happens under some shard's lock, so with all
	// of them locked it is exactly the stored weight. Adds reserve room with
	// a compare-and-swap; Get, Pin and Unpin never touch it, and an Add that
	// evicts as much as it stores does not write it.
	used atomic.Int64

	// waiters counts AddWait calls that may sleep, so that Unpin and Add
	// skip the wake-up when it is zero.
	waiters atomic.Int64
	waitMu  sync.Mutex
	// waitCh is closed, and cleared, when room may have appeared; AddWait
	// takes it before trying to add, so a wake-up between the try and the
	// sleep is not lost. Guarded by waitMu.
	waitCh chan struct{}
}

// cacheShard is one lock's worth of the cache. The fields Gets read, the
// ones they write and the ones under the lock sit on separate cache lines,
// and the size (a multiple of 64 bytes, cache_test.go checks it) keeps
// neighbouring shards apart too.
type cacheShard[K comparable, V any] struct {
	// table is the shard's index, read by Gets without the lock. Writers,
	// under mu, change its slots with atomic stores or publish a new table.
	table atomic.Pointer[cacheTable[K, V]]
	// clock counts the pushes and touches passed to the policy; each stamps
	// its entry with the new count, so an entry's position from the front
	// of an LRU is at most clock - stamp. recent is an eighth of the
	// shard's unpinned entries: Get does not pass on a hit on an entry
	// stamped within the last recent ticks, since for an LRU it would only
	// reorder the most recent eighth. Both are stored under mu.
	clock, recent atomic.Uint32
	_             [48]byte

	hits, misses atomic.Uint64
	// touched counts the slots of touches that Gets have claimed since the
	// lock holder last applied them; claims beyond touchBuffer are dropped
	// hits. Gets fill the slots they claim; the lock holder empties them.
	touched atomic.Uint32
	_       [44]byte
	touches [touchBuffer]atomic.Pointer[cacheEntry[K, V]]

	mu sync.Mutex

	// The fields below are guarded by mu, except evictable, which is also
	// read without it.

	entries []*cacheEntry[K, V] // by Handle; nil where free
	free    []Handle
	policy  Policy[K] // orders the entries with no pins
	count   int64     // entries stored
	held    int64     // entries pinned
	// weight and pinned are the total weight of the shard's entries and of
	// its pinned ones; weight - pinned is what eviction can free here.
	weight, pinned           int64
	evictions, evictedWeight uint64
	// evictable is weight - pinned, stored whenever either changes, so an
	// Add short of room can look for victims in other shards without
	// locking them.
	evictable atomic.Int64
	_         [64]byte
}

// cacheEntry is one stored value. key, value and weight never change
// once the entry is published in a table, so Gets read them without a lock;
// a new Add of the same key after a removal makes a new entry.
type cacheEntry[K comparable, V any] struct {
	key    K
	value  V
	weight int64

	// Guarded by the shard's lock.
	pins   int32
	handle Handle // the entry's policy handle and index in entries; noHandle once removed

	stamp atomic.Uint32 // the shard's clock when the policy was last told of the entry; stored under the lock
}

// noHandle marks an entry that has left the cache.
const noHandle = ^Handle(0)

// cacheItem is an evicted entry on its way to OnEvict.
type cacheItem[K comparable, V any] struct {
	key   K
	value V
}

// NewCache returns an empty cache.
func NewCache[K comparable, V any](o CacheOptions[K, V]) (*Cache[K, V], error) {
	if o.Capacity <= 0 {
		return nil, fmt.Errorf("cache: capacity %d: must be positive", o.Capacity)
	}
	n := o.Shards
	switch {
	case n < 0 || n > maxShards:
		return nil, fmt.Errorf("cache: %d shards: must be between 1 and %d (0 for the default)", n, maxShards)
	case n == 0:
		n = int(min(int64(shardsPerProc*runtime.GOMAXPROCS(0)), o.Capacity, maxShards))
	}
	logN := bits.Len(uint(n - 1)) // n rounded up to 1<<logN
	c := &Cache[K, V]{
		capacity:  o.Capacity,
		hash:      o.Hash,
		shardBits: uint(logN),
		onEvict:   o.OnEvict,
		shards:    make([]cacheShard[K, V], 1<<logN),
	}
	if c.hash == nil {
		seed := maphash.MakeSeed()
		c.hash = func(k K) uint64 { return maphash.Comparable(seed, k) }
	}
	newPolicy := o.Policy
	if newPolicy == nil {
		newPolicy = NewLRU[K]
	}
	scramble := c.scramble
	for i := range c.shards {
		s := &c.shards[i]
		s.table.Store(newCacheTable[K, V](0, scramble, c.shardBits))
		if s.policy = newPolicy(); s.policy == nil {
			return nil, errors.New("cache: Policy returned nil")
		}
	}
	return c, nil
}

// locate returns k's scrambled hash and shard.
func (c *Cache[K, V]) locate(k K) (uint64, *cacheShard[K, V]) {
	h := c.scramble(k)
	return h, &c.shards[h>>(64-c.shardBits)]
}

// scramble returns k's hash times 2^64/φ, which carries every bit of the
// hash into the top bits (Fibonacci hashing): the top shardBits pick the
// shard, the bits below them the bucket.
func (c *Cache[K, V]) scramble(k K) uint64 { return c.hash(k) * 0x9e3779b97f4a7c15 }

// Get returns the value stored under k and marks it recently used. It counts
// a hit or a miss. It takes no lock and never waits.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	h, s := c.locate(k)
	e := s.table.Load().find(h, k)
	if e == nil {
		s.misses.Add(1)
		var zero V
		return zero, false
	}
	s.hits.Add(1)
	if s.clock.Load()-e.stamp.Load() > s.recent.Load() {
		s.touch(e)
	}
	return e.value, true
}

// Contains reports whether k is stored, without touching it or counting.
func (c *Cache[K, V]) Contains(k K) bool {
	h, s := c.locate(k)
	return s.table.Load().find(h, k) != nil
}

// Pin is Get that also pins the entry: it is not evicted until a matching
// Unpin. Every successful Pin needs one Unpin.
func (c *Cache[K, V]) Pin(k K) (V, bool) {
	h, s := c.locate(k)
	s.mu.Lock()
	e := s.table.Load().find(h, k)
	if e == nil {
		s.mu.Unlock()
		s.misses.Add(1)
		var zero V
		return zero, false
	}
	s.hits.Add(1)
	s.touchLocked(e, true)
	s.mu.Unlock()
	return e.value, true
}

// Unpin releases one pin of k. When the last pin goes the entry becomes
// evictable again, as the most recently used. It fails with ErrNotPinned if
// k is absent or holds no pin.
func (c *Cache[K, V]) Unpin(k K) error {
	h, s := c.locate(k)
	s.mu.Lock()
	e := s.table.Load().find(h, k)
	if e == nil || e.pins == 0 {
		s.mu.Unlock()
		return fmt.Errorf("cache: unpin %v: %w", k, ErrNotPinned)
	}
	e.pins--
	released := e.pins == 0
	if released {
		s.applyTouchesLocked() // so the policy sees the hits before the push
		s.pinned -= e.weight
		s.held--
		s.evictable.Store(s.weight - s.pinned)
		s.policy.Push(e.handle, k)
		s.stampLocked(e)
		s.setRecentLocked()
	}
	s.mu.Unlock()
	if released {
		// Less pinned weight is what turns an AddWait's ErrNoSpace into room.
		c.wake()
	}
	return nil
}

// Remove deletes the unpinned entry under k and returns its value; OnEvict is
// not called. It fails with ErrPinned if the entry holds pins and with
// ErrNotFound if there is none.
func (c *Cache[K, V]) Remove(k K) (V, error) {
	var zero V
	h, s := c.locate(k)
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.table.Load().find(h, k)
	if e == nil {
		return zero, fmt.Errorf("cache: remove %v: %w", k, ErrNotFound)
	}
	if e.pins > 0 {
		return zero, fmt.Errorf("cache: remove %v: %d pins: %w", k, e.pins, ErrPinned)
	}
	s.policy.Remove(e.handle)
	s.dropLocked(e)
	c.used.Add(-e.weight)
	// The room freed was evictable already: an Add fails only for pinned
	// weight, which this does not change, so no AddWait needs waking.
	return e.value, nil
}

// Add stores v under k with the given weight, pinned once if pin, unless k is
// already stored: then it returns the stored value (pinned once more if pin,
// and marked recently used) and inserted false.
//
// To make room it evicts unpinned entries, the victims of k's shard's policy
// first and then other shards'. If room cannot be made because the rest of
// the capacity is pinned it fails with ErrNoSpace and evicts nothing. (Under
// concurrent Adds and Pins an Add may evict and still fail; the room it freed
// is then taken by other Adds.) A weight above the capacity fails with
// ErrTooLarge.
func (c *Cache[K, V]) Add(k K, v V, weight int64, pin bool) (stored V, inserted bool, err error) {
	if weight < 0 || weight > c.capacity {
		var zero V
		if weight < 0 {
			return zero, false, fmt.Errorf("cache: add %v: negative weight %d", k, weight)
		}
		return zero, false, fmt.Errorf("cache: add %v of weight %d, capacity %d: %w", k, weight, c.capacity, ErrTooLarge)
	}
	// Victims wait here for OnEvict until no lock is held. An Add rarely
	// evicts more than a few, so they stay on the stack.
	var buf [4]cacheItem[K, V]
	victims := buf[:0]
	defer func() { c.notify(victims) }()

	h, s := c.locate(k)
	s.mu.Lock()
	if e := s.table.Load().find(h, k); e != nil {
		s.touchLocked(e, pin)
		s.mu.Unlock()
		return e.value, false, nil
	}
	// Apply the buffered hits before choosing victims by them.
	s.applyTouchesLocked()
	// freed is the weight evicted for this entry and still counted in used:
	// it becomes the entry's room when the reservation succeeds.
	var freed, over int64
	for {
		if c.reserve(freed, weight) {
			return c.insertUnlock(s, h, k, v, weight, pin), true, nil
		}
		over = c.used.Load() - freed + weight - c.capacity
		if over <= 0 {
			continue // room appeared meanwhile
		}
		if over > s.weight-s.pinned {
			break
		}
		freed, victims = s.evictLocked(freed, victims, c.onEvict != nil)
	}

	// k's shard cannot make the room alone. If the others together seem
	// able to, evict the rest of this shard and then take victims from the
	// others, one lock at a time.
	avail := s.weight - s.pinned
	for i := range c.shards {
		if t := &c.shards[i]; t != s {
			avail += t.evictable.Load()
		}
	}
	if avail >= over {
		for s.weight > s.pinned && c.used.Load()-freed+weight > c.capacity {
			freed, victims = s.evictLocked(freed, victims, c.onEvict != nil)
		}
		s.mu.Unlock()
		freed, victims = c.steal(h, freed, weight, victims)
		s.mu.Lock()
		if e := s.table.Load().find(h, k); e != nil { // stored meanwhile by another Add
			c.used.Add(-freed)
			s.touchLocked(e, pin)
			s.mu.Unlock()
			return e.value, false, nil
		}
		if c.reserve(freed, weight) {
			return c.insertUnlock(s, h, k, v, weight, pin), true, nil
		}
	}
	// Concurrent pins got in the way, or the room is not there: decide
	// exactly, with every shard locked.
	c.used.Add(-freed)
	s.mu.Unlock()
	stored, inserted, victims, err = c.addLocked(s, h, k, v, weight, pin, victims)
	if inserted {
		c.wake()
	}
	return stored, inserted, err
}

// EvictOne evicts one unpinned entry, the policy's victim of the shard with
// the most evictable weight, and reports whether there was one. A caller
// whose own memory for entries runs out before the cache's capacity does
// (the host tier's arena, when buddy blocks fragment) uses it to make room.
func (c *Cache[K, V]) EvictOne() bool {
	for {
		best, bestWeight := -1, int64(0)
		for i := range c.shards {
			if w := c.shards[i].evictable.Load(); w > bestWeight {
				best, bestWeight = i, w
			}
		}
		if best < 0 {
			return false
		}
		t := &c.shards[best]
		t.mu.Lock()
		if t.weight <= t.pinned {
			t.mu.Unlock()
			continue // pinned meanwhile: look again
		}
		t.applyTouchesLocked()
		var victims []cacheItem[K, V]
		freed, victims := t.evictLocked(0, victims, c.onEvict != nil)
		c.used.Add(-freed) // under the lock, as every change to used
		t.mu.Unlock()
		c.notify(victims)
		return true
	}
}

// reserve turns freed, weight evicted by the caller and still counted in
// used, into room for weight, if that fits the capacity.
func (c *Cache[K, V]) reserve(freed, weight int64) bool {
	if freed >= weight {
		// Trading freed for weight cannot raise used: no compare needed,
		// and an Add that evicts what it stores writes nothing shared.
		if d := weight - freed; d != 0 {
			c.used.Add(d)
		}
		return true
	}
	for {
		u := c.used.Load()
		if u-freed+weight > c.capacity {
			return false
		}
		if c.used.CompareAndSwap(u, u-freed+weight) {
			return true
		}
	}
}

// insertUnlock stores k in s, whose room is reserved, unlocks s and returns
// v.
func (c *Cache[K, V]) insertUnlock(s *cacheShard[K, V], h uint64, k K, v V, weight int64, pin bool) V {
	s.insertLocked(h, k, v, weight, pin)
	s.mu.Unlock()
	// An AddWait may be waiting to add k: it would now find it.
	c.wake()
	return v
}

// steal evicts victims from the shards after the one of the scrambled hash
// h, in turn and one lock at a time, until freed covers weight or every
// shard has been visited.
func (c *Cache[K, V]) steal(h uint64, freed, weight int64, victims []cacheItem[K, V]) (int64, []cacheItem[K, V]) {
	for i := range c.others(h) {
		if c.used.Load()-freed+weight <= c.capacity {
			break
		}
		t := &c.shards[i]
		if t.evictable.Load() == 0 {
			continue
		}
		t.mu.Lock()
		t.applyTouchesLocked()
		for t.weight > t.pinned && c.used.Load()-freed+weight > c.capacity {
			freed, victims = t.evictLocked(freed, victims, c.onEvict != nil)
		}
		t.mu.Unlock()
	}
	return freed, victims
}

// others yields the indices of the shards after the one of the scrambled
// hash h, wrapping around.
func (c *Cache[K, V]) others(h uint64) func(func(int) bool) {
	own := int(h >> (64 - c.shardBits))
	return func(yield func(int) bool) {
		mask := len(c.shards) - 1
		for j := 1; j <= mask; j++ {
			if !yield((own + j) & mask) {
				return
			}
		}
	}
}

// addLocked is Add with every shard locked, where the stored and pinned
// weights are exact: it either evicts enough or fails having evicted
// nothing.
func (c *Cache[K, V]) addLocked(s *cacheShard[K, V], h uint64, k K, v V, weight int64, pin bool, victims []cacheItem[K, V]) (V, bool, []cacheItem[K, V], error) {
	c.lockAll()
	defer c.unlockAll()
	if e := s.table.Load().find(h, k); e != nil {
		s.touchLocked(e, pin)
		return e.value, false, victims, nil
	}
	need := c.used.Load() + weight - c.capacity
	var avail, pinned int64
	for i := range c.shards {
		avail += c.shards[i].weight - c.shards[i].pinned
		pinned += c.shards[i].pinned
	}
	if avail < need {
		var zero V
		return zero, false, victims, fmt.Errorf("cache: add %v of weight %d: %d of capacity %d pinned: %w",
			k, weight, pinned, c.capacity, ErrNoSpace)
	}
	// k's shard first, then one victim per other shard in turn, so the room
	// comes from the coldest entries of many shards rather than emptying one.
	var freed int64
	collect := c.onEvict != nil
	s.applyTouchesLocked()
	for freed < need && s.weight > s.pinned {
		freed, victims = s.evictLocked(freed, victims, collect)
	}
	for freed < need {
		for i := range c.others(h) {
			if freed >= need {
				break
			}
			if t := &c.shards[i]; t.weight > t.pinned {
				t.applyTouchesLocked()
				freed, victims = t.evictLocked(freed, victims, collect)
			}
		}
	}
	c.used.Add(weight - freed)
	s.insertLocked(h, k, v, weight, pin)
	return v, true, victims, nil
}

// AddWait is Add that, when the rest of the capacity is pinned, waits for
// Unpins to make room (or for another goroutine to store k) instead of
// failing with ErrNoSpace. It gives up when ctx is done, returning an error
// that wraps both ErrNoSpace and ctx's error.
func (c *Cache[K, V]) AddWait(ctx context.Context, k K, v V, weight int64, pin bool) (V, bool, error) {
	stored, inserted, err := c.Add(k, v, weight, pin)
	if !errors.Is(err, ErrNoSpace) {
		return stored, inserted, err
	}
	c.waiters.Add(1)
	defer c.waiters.Add(-1)
	for {
		// Take the channel before trying: an Unpin that the try misses
		// comes after its locks, sees waiters > 0 and closes the channel.
		ch := c.waitChan()
		stored, inserted, err = c.Add(k, v, weight, pin)
		if !errors.Is(err, ErrNoSpace) {
			return stored, inserted, err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			var zero V
			return zero, false, fmt.Errorf("%w; gave up waiting: %w", err, ctx.Err())
		}
	}
}

// Stats returns a snapshot of the counters, taken with every shard locked.
func (c *Cache[K, V]) Stats() CacheStats {
	c.lockAll()
	defer c.unlockAll()
	st := CacheStats{Capacity: c.capacity}
	for i := range c.shards {
		s := &c.shards[i]
		st.Weight += s.weight
		st.PinnedWeight += s.pinned
		st.Entries += s.count
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		st.Evictions += s.evictions
		st.EvictedWeight += s.evictedWeight
	}
	return st
}

// Keys returns the keys stored, in no particular order. It is a snapshot
// taken one shard at a time: entries added or removed meanwhile may or may
// not be in it.
func (c *Cache[K, V]) Keys() []K {
	var keys []K
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		t := s.table.Load()
		for j := range t.buckets {
			for b := &t.buckets[j]; b != nil; b = b.next.Load() {
				for k := range bucketSlots {
					if e := b.entries[k].Load(); e != nil {
						keys = append(keys, e.key)
					}
				}
			}
		}
		s.mu.Unlock()
	}
	return keys
}

// Len returns the number of entries stored.
func (c *Cache[K, V]) Len() int {
	c.lockAll()
	defer c.unlockAll()
	var n int64
	for i := range c.shards {
		n += c.shards[i].count
	}
	return int(n)
}

// lockAll locks every shard in index order. It is the only place that holds
// more than one shard lock, and it is never called with one held, so shard
// locks cannot deadlock.
func (c *Cache[K, V]) lockAll() {
	for i := range c.shards {
		c.shards[i].mu.Lock()
	}
}

func (c *Cache[K, V]) unlockAll() {
	for i := range c.shards {
		c.shards[i].mu.Unlock()
	}
}

// notify hands the victims to OnEvict; it is called with no lock held.
func (c *Cache[K, V]) notify(victims []cacheItem[K, V]) {
	for _, it := range victims {
		c.onEvict(it.key, it.value)
	}
}

func (c *Cache[K, V]) waitChan() chan struct{} {
	c.waitMu.Lock()
	defer c.waitMu.Unlock()
	if c.waitCh == nil {
		c.waitCh = make(chan struct{})
	}
	return c.waitCh
}

// wake wakes every AddWait to try again.
func (c *Cache[K, V]) wake() {
	if c.waiters.Load() == 0 {
		return
	}
	c.waitMu.Lock()
	if c.waitCh != nil {
		close(c.waitCh)
		c.waitCh = nil
	}
	c.waitMu.Unlock()
}

// touch passes a Get's hit on e to the policy: at once if the lock is free,
// else through the touches buffer, or not at all if that is full. A reader
// never waits for a writer.
func (s *cacheShard[K, V]) touch(e *cacheEntry[K, V]) {
	if s.mu.TryLock() {
		s.applyTouchesLocked()
		s.touchLocked(e, false)
		s.mu.Unlock()
		return
	}
	if s.touched.Load() >= touchBuffer {
		return
	}
	if i := s.touched.Add(1) - 1; i < touchBuffer {
		s.touches[i].Store(e)
	}
}

// applyTouchesLocked hands the buffered hits to the policy, oldest first, in
// one pass: Gets that keep buffering meanwhile cannot hold the lock holder
// here. A hit whose Get claimed a slot but had not filled it yet waits for
// the next call, or is lost to a later hit claiming the same slot.
func (s *cacheShard[K, V]) applyTouchesLocked() {
	if s.touched.Load() == 0 {
		return
	}
	n := s.touched.Swap(0)
	for i := range min(n, touchBuffer) {
		if e := s.touches[i].Swap(nil); e != nil {
			s.touchLocked(e, false)
		}
	}
}

// setRecentLocked sets recent to an eighth of the entries the policy orders.
func (s *cacheShard[K, V]) setRecentLocked() {
	s.recent.Store(uint32(min((s.count-s.held)/8, math.MaxUint32)))
}

// stampLocked records that the policy was just told of e.
func (s *cacheShard[K, V]) stampLocked(e *cacheEntry[K, V]) {
	c := s.clock.Load() + 1
	s.clock.Store(c)
	e.stamp.Store(c)
}

// touchLocked records a hit on e, if it is still stored, and pins it once
// more if pin.
func (s *cacheShard[K, V]) touchLocked(e *cacheEntry[K, V], pin bool) {
	if e.handle == noHandle {
		return // evicted or removed since the Get found it
	}
	s.policy.Touch(e.handle)
	s.stampLocked(e)
	if pin {
		if e.pins == 0 {
			s.policy.Hold(e.handle)
			s.pinned += e.weight
			s.held++
			s.evictable.Store(s.weight - s.pinned)
			s.setRecentLocked()
		}
		e.pins++
	}
}

func (s *cacheShard[K, V]) insertLocked(h uint64, k K, v V, weight int64, pin bool) {
	e := &cacheEntry[K, V]{key: k, value: v, weight: weight}
	if n := len(s.free); n > 0 {
		e.handle = s.free[n-1]
		s.free = s.free[:n-1]
		s.entries[e.handle] = e
	} else {
		e.handle = Handle(len(s.entries))
		s.entries = append(s.entries, e)
	}
	s.count++
	s.weight += weight
	if pin {
		e.pins = 1
		s.pinned += weight
		s.held++
	} else {
		s.policy.Push(e.handle, k)
		s.stampLocked(e)
	}
	s.evictable.Store(s.weight - s.pinned)
	s.setRecentLocked()
	t := s.table.Load()
	if t.full(s.count) {
		t = t.grow()
		s.table.Store(t)
	}
	t.insert(e, h)
}

// evictLocked evicts the shard's next victim, which must exist: it adds the
// victim's weight to freed and, if collect, the victim to victims.
func (s *cacheShard[K, V]) evictLocked(freed int64, victims []cacheItem[K, V], collect bool) (int64, []cacheItem[K, V]) {
	h, ok := s.policy.Evict()
	if !ok || int(h) >= len(s.entries) || s.entries[h] == nil {
		panic("storage: cache policy has no victim while unpinned entries remain")
	}
	e := s.entries[h]
	if e.pins > 0 {
		// A policy must never offer a held entry: its memory is in use.
		panic("storage: cache policy chose a pinned entry as victim")
	}
	if collect {
		victims = append(victims, cacheItem[K, V]{e.key, e.value})
	}
	s.evictions++
	s.evictedWeight += uint64(e.weight)
	s.dropLocked(e)
	return freed + e.weight, victims
}

// dropLocked deletes the unpinned entry e, which the policy has let go of;
// the caller gives its weight back to Cache.used.
func (s *cacheShard[K, V]) dropLocked(e *cacheEntry[K, V]) {
	s.table.Load().remove(e)
	s.entries[e.handle] = nil
	s.free = append(s.free, e.handle)
	e.handle = noHandle
	s.count--
	s.setRecentLocked()
	s.weight -= e.weight
	s.evictable.Store(s.weight - s.pinned)
}

// bucketSlots is the number of entries a cacheBucket holds: with its tag
// word and overflow pointer, a bucket fills one 64-byte cache line.
const bucketSlots = 6

// cacheTable is a shard's index: a hash table of buckets, each holding up to
// bucketSlots entries and a chain of overflow buckets, that Gets read while
// the shard's lock holder changes it.
//
// A bucket's meta word holds one tag byte per slot: 0x80 and seven bits of
// the key's hash, or 0 for an empty slot, so a lookup compares all six in a
// few instructions and reads an entry only when its tag matches. A writer
// fills a slot by storing the entry and then the meta word with its tag, and
// empties it by storing the meta word without the tag and then nil. A reader
// loads the meta word, then the entry of each matching slot, and compares
// keys: a slot emptied or refilled between the two loads gives a miss or
// another key, never a wrong value. Entries never move within a table; when
// the table grows the writer builds a new one and publishes it, and readers
// still in the old one get the answers of a moment ago.
type cacheTable[K comparable, V any] struct {
	buckets []cacheBucket[K, V]
	bits    uint // log2(len(buckets))

	// hash and shardBits are the cache's, for inserting and removing
	// entries by their keys' scrambled hashes.
	hash      func(K) uint64
	shardBits uint
}

type cacheBucket[K comparable, V any] struct {
	meta    atomic.Uint64
	entries [bucketSlots]atomic.Pointer[cacheEntry[K, V]]
	next    atomic.Pointer[cacheBucket[K, V]]
}

// newCacheTable returns an empty table sized for n entries.
func newCacheTable[K comparable, V any](n int64, hash func(K) uint64, shardBits uint) *cacheTable[K, V] {
	b := uint(bits.Len64(uint64(n / bucketLoad)))
	return &cacheTable[K, V]{buckets: make([]cacheBucket[K, V], 1<<b), bits: b, hash: hash, shardBits: shardBits}
}

// bucketLoad is the average number of entries per bucket at which a table
// grows, to half that: most buckets keep a free slot, and the table stays
// small, since on the machines measured the misses of the TLB (the
// entries and buckets of a large cache span thousands of pages) cost more
// than the rare overflow bucket.
const bucketLoad = 5

// full reports whether a table holding n entries should grow before it takes
// another.
func (t *cacheTable[K, V]) full(n int64) bool { return n >= bucketLoad*int64(len(t.buckets)) }

// bucket returns the first bucket for the scrambled hash h: the bits just
// below the shard bits choose it.
func (t *cacheTable[K, V]) bucket(h uint64) *cacheBucket[K, V] {
	return &t.buckets[(h<<t.shardBits)>>(64-t.bits)]
}

// tagOf returns the tag byte of the scrambled hash h, taken from bits that
// neither the shard nor (below 2^24 buckets per shard) the bucket uses.
func tagOf(h uint64) uint64 { return (h>>24)&0x7f | 0x80 }

// find returns the entry stored under k, whose scrambled hash is h, or nil.
func (t *cacheTable[K, V]) find(h uint64, k K) *cacheEntry[K, V] {
	const lsb, msb = 0x0101010101010101, 0x8080808080808080
	tags := lsb * tagOf(h)
	for b := t.bucket(h); b != nil; b = b.next.Load() {
		// The bytes of x are zero where the tag matches; m has the top bit
		// of those bytes set (and, rarely, of a byte above a match, which
		// the key comparison rejects).
		x := b.meta.Load() ^ tags
		for m := (x - lsb) &^ x & msb; m != 0; m &= m - 1 {
			if i := bits.TrailingZeros64(m) / 8; i < bucketSlots {
				if e := b.entries[i].Load(); e != nil && e.key == k {
					return e
				}
			}
		}
	}
	return nil
}

// insert stores e, whose key is absent and hashes to h, in the first empty
// slot of its bucket chain, adding an overflow bucket if there is none.
func (t *cacheTable[K, V]) insert(e *cacheEntry[K, V], h uint64) {
	for b := t.bucket(h); ; {
		meta := b.meta.Load()
		for i := range bucketSlots {
			if meta>>(8*i)&0xff == 0 {
				b.entries[i].Store(e)
				b.meta.Store(meta | tagOf(h)<<(8*i))
				return
			}
		}
		next := b.next.Load()
		if next == nil {
			next = new(cacheBucket[K, V])
			b.next.Store(next)
		}
		b = next
	}
}

// remove empties e's slot. Overflow buckets stay for the entries to come.
func (t *cacheTable[K, V]) remove(e *cacheEntry[K, V]) {
	for b := t.bucket(t.hash(e.key)); b != nil; b = b.next.Load() {
		for i := range bucketSlots {
			if b.entries[i].Load() == e {
				b.meta.Store(b.meta.Load() &^ (0xff << (8 * i)))
				b.entries[i].Store(nil)
				return
			}
		}
	}
	panic("storage: cache entry missing from its table")
}

// grow returns a new table, twice the size of t, holding t's entries.
func (t *cacheTable[K, V]) grow() *cacheTable[K, V] {
	nt := &cacheTable[K, V]{buckets: make([]cacheBucket[K, V], 2*len(t.buckets)), bits: t.bits + 1,
		hash: t.hash, shardBits: t.shardBits}
	for i := range t.buckets {
		for b := &t.buckets[i]; b != nil; b = b.next.Load() {
			for j := range bucketSlots {
				if e := b.entries[j].Load(); e != nil {
					nt.insert(e, t.hash(e.key))
				}
			}
		}
	}
	return nt
}
