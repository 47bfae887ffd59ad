package storage

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"
)

// cacheShardHash returns a Hash that puts key k in shard shardOf(k) of a
// cache with 1<<shardBits shards: it undoes the cache's Fibonacci scrambling.
func cacheShardHash(shardBits uint, shardOf func(int) int) func(int) uint64 {
	const phi = 0x9e3779b97f4a7c15
	inv := uint64(phi) // Newton's iteration for the inverse of phi mod 2^64
	for range 6 {
		inv *= 2 - phi*inv
	}
	return func(k int) uint64 {
		// The key's own bits go below the shard bits, low enough to leave
		// the bucket bits and the tag varied.
		h := uint64(shardOf(k))<<(64-shardBits) | uint64(k)*0x10001<<8
		if shardBits == 0 {
			h = uint64(k) * 0x10001 << 8
		}
		return h * inv
	}
}

func newTestCache[K comparable, V any](t *testing.T, o CacheOptions[K, V]) *Cache[K, V] {
	t.Helper()
	c, err := NewCache(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// checkCache checks the invariants that hold whenever no operation is in
// flight: the global counter matches the shards, each shard's counts match
// its entries, and the policy orders exactly the unpinned entries.
func checkCache[K comparable, V any](t *testing.T, c *Cache[K, V]) {
	t.Helper()
	c.lockAll()
	defer c.unlockAll()
	var weight int64
	for i := range c.shards {
		s := &c.shards[i]
		var w, pinned, n, held int64
		for h, e := range s.entries {
			if e == nil {
				continue
			}
			n++
			w += e.weight
			if e.pins > 0 {
				pinned += e.weight
				held++
			}
			if e.handle != Handle(h) {
				t.Errorf("shard %d: entry %v: handle %d at %d", i, e.key, e.handle, h)
			}
			if got := s.table.Load().find(c.scramble(e.key), e.key); got != e {
				t.Errorf("shard %d: entry %v not found in the table", i, e.key)
			}
		}
		if n != s.count || w != s.weight || pinned != s.pinned || held != s.held || s.evictable.Load() != w-pinned ||
			int64(s.recent.Load()) != (n-held)/8 {
			t.Errorf("shard %d: %d entries of weight %d, %d of weight %d pinned; shard says %d, %d, %d, %d (evictable %d, recent %d)",
				i, n, w, held, pinned, s.count, s.weight, s.held, s.pinned, s.evictable.Load(), s.recent.Load())
		}
		if l, ok := s.policy.(*lru[K]); ok {
			unpinned := 0
			for _, e := range s.entries {
				if e != nil && e.pins == 0 {
					unpinned++
				}
			}
			if got := l.len(); got != unpinned {
				t.Errorf("shard %d: LRU orders %d entries, %d are unpinned", i, got, unpinned)
			}
		}
		weight += w
	}
	if u := c.used.Load(); u != weight || u > c.capacity {
		t.Errorf("used %d, stored weight %d, capacity %d", u, weight, c.capacity)
	}
}

// len counts the entries in the list, checking its links.
func (l *lru[K]) len() int {
	n := 0
	for i := l.nodes[0].next; i != 0; i = l.nodes[i].next {
		if !l.nodes[i].linked || l.nodes[l.nodes[i].next].prev != i {
			panic("lru: broken list")
		}
		n++
	}
	return n
}

func TestCacheOptions(t *testing.T) {
	for _, o := range []CacheOptions[int, int]{
		{Capacity: 0},
		{Capacity: -1},
		{Capacity: 10, Shards: -1},
		{Capacity: 10, Shards: maxShards + 1},
		{Capacity: 10, Policy: func() Policy[int] { return nil }},
	} {
		if _, err := NewCache(o); err == nil {
			t.Errorf("NewCache(%+v) succeeded", o)
		}
	}
	for _, tc := range []struct {
		capacity int64
		shards   int
		want     int
	}{
		{100, 3, 4},
		{100, 1, 1},
		{1, 0, 1},       // never more shards than units of capacity
		{3, 0, 4},       // rounded up
		{1 << 40, 0, 0}, // the default: checked below
	} {
		c := newTestCache(t, CacheOptions[int, int]{Capacity: tc.capacity, Shards: tc.shards})
		if tc.want == 0 {
			if n := len(c.shards); n < 4 || n&(n-1) != 0 {
				t.Errorf("default: %d shards, want a power of two of at least 4", n)
			}
		} else if len(c.shards) != tc.want {
			t.Errorf("capacity %d, Shards %d: %d shards, want %d", tc.capacity, tc.shards, len(c.shards), tc.want)
		}
	}
}

func TestCacheShardLayout(t *testing.T) {
	if n := unsafe.Sizeof(cacheShard[int, int]{}); n%64 != 0 {
		t.Errorf("cacheShard is %d bytes, not a multiple of the 64-byte cache line: fix the padding", n)
	}
	if n := unsafe.Sizeof(cacheBucket[int, int]{}); n != 64 {
		t.Errorf("cacheBucket is %d bytes, want one 64-byte cache line", n)
	}
	if n := unsafe.Sizeof(cacheEntry[int, int]{}); n > 48 {
		t.Errorf("cacheEntry[int, int] is %d bytes, want at most 48 (a size class): every byte is TLB reach", n)
	}
	var s cacheShard[int, int]
	// Gets read the first line and write the second; the lock is beyond.
	if off := unsafe.Offsetof(s.hits); off != 64 {
		t.Errorf("hits at offset %d, want 64", off)
	}
	if off := unsafe.Offsetof(s.mu); off%64 != 0 {
		t.Errorf("mu at offset %d, want the start of a cache line", off)
	}
}

func TestCacheLRUOrder(t *testing.T) {
	var evicted []string
	c := newTestCache(t, CacheOptions[string, int]{
		Capacity: 3, Shards: 1,
		OnEvict: func(k string, _ int) { evicted = append(evicted, k) },
	})
	for i, k := range []string{"a", "b", "c"} {
		if _, ins, err := c.Add(k, i, 1, false); err != nil || !ins {
			t.Fatalf("Add(%s): inserted %v, %v", k, ins, err)
		}
	}
	// a, b, c in order of use; Get(a) makes b the coldest, Contains
	// changes nothing.
	if v, ok := c.Get("a"); !ok || v != 0 {
		t.Fatalf("Get(a) = %d, %v", v, ok)
	}
	if !c.Contains("b") {
		t.Fatal("Contains(b) = false")
	}
	mustAdd := func(k string) {
		t.Helper()
		if _, _, err := c.Add(k, 0, 1, false); err != nil {
			t.Fatal(err)
		}
	}
	mustAdd("d") // evicts b
	mustAdd("e") // evicts c
	// Pin and Unpin make a the most recently used again.
	if _, ok := c.Pin("a"); !ok {
		t.Fatal("Pin(a) missed")
	}
	if err := c.Unpin("a"); err != nil {
		t.Fatal(err)
	}
	mustAdd("f") // evicts d
	// An Add of a stored key counts as a use.
	if _, ins, _ := c.Add("e", 9, 1, false); ins {
		t.Fatal("Add(e) again inserted")
	}
	mustAdd("g") // evicts a
	if want := []string{"b", "c", "d", "a"}; !slices.Equal(evicted, want) {
		t.Fatalf("evicted %v, want %v", evicted, want)
	}
	for _, k := range []string{"e", "f", "g"} {
		if !c.Contains(k) {
			t.Errorf("%s missing", k)
		}
	}
	checkCache(t, c)
}

// TestCacheRecentHits checks the one liberty Get takes with LRU order: a hit
// on an entry among the most recent eighth of its shard is not passed on.
func TestCacheRecentHits(t *testing.T) {
	var evicted []int
	c := newTestCache(t, CacheOptions[int, int]{
		Capacity: 64, Shards: 1,
		OnEvict: func(k, _ int) { evicted = append(evicted, k) },
	})
	for k := range 64 {
		c.Add(k, k, 1, false)
	}
	s := &c.shards[0]
	clock := s.clock.Load()
	c.Get(60) // fourth from the front, within the last 8 pushes: not passed on
	if s.clock.Load() != clock {
		t.Fatal("a hit on a recent entry reached the policy")
	}
	c.Get(0) // the coldest: passed on
	c.Get(1)
	if s.clock.Load() != clock+2 {
		t.Fatal("hits on old entries did not reach the policy")
	}
	c.Add(64, 64, 1, false)
	c.Add(65, 65, 1, false)
	if !slices.Equal(evicted, []int{2, 3}) {
		t.Fatalf("evicted %v, want [2 3]", evicted)
	}
	if st := c.Stats(); st.Hits != 3 {
		t.Fatalf("%d hits counted, want 3: skipped hits count too", st.Hits)
	}

	// The eighth is of the unpinned entries: with all but 4 pinned, every
	// hit that reorders them is passed on.
	for k := 4; k < 64; k++ {
		c.Pin(k)
	}
	evicted = nil
	for _, k := range []int{0, 1, 64, 65} {
		c.Get(k) // 0, 1, 64, 65 in order of use, coldest first
	}
	c.Get(0) // three ticks ago, but the coldest of 4: passed on
	c.Add(66, 66, 1, false)
	if !slices.Equal(evicted, []int{1}) {
		t.Fatalf("evicted %v, want [1]", evicted)
	}
	checkCache(t, c)
}

func TestLRUPolicy(t *testing.T) {
	p := NewLRU[int]()
	if _, ok := p.Evict(); ok {
		t.Fatal("empty LRU evicted")
	}
	for h := range Handle(5) {
		p.Push(h, int(h))
	}
	p.Touch(0) // order, coldest first: 1 2 3 4 0
	p.Hold(2)  // 1 3 4 0
	p.Touch(2) // held: no effect
	p.Remove(3)
	p.Push(2, 2) // 1 4 0 2
	p.Touch(9)   // never pushed: no effect
	var got []Handle
	for {
		h, ok := p.Evict()
		if !ok {
			break
		}
		got = append(got, h)
	}
	if want := []Handle{1, 4, 0, 2}; !slices.Equal(got, want) {
		t.Fatalf("evicted %v, want %v", got, want)
	}
	// Handles are reused after they end.
	p.Push(1, 1)
	p.Push(3, 3)
	p.Remove(1)
	if h, ok := p.Evict(); !ok || h != 3 {
		t.Fatalf("Evict() = %d, %v, want 3", h, ok)
	}
	if testing.AllocsPerRun(100, func() { p.Push(2, 2); p.Touch(2); p.Hold(2); p.Push(2, 2); p.Evict() }) != 0 {
		t.Error("LRU allocates in steady state")
	}
}

func TestCachePinnedNeverEvicted(t *testing.T) {
	var evicted []int
	c := newTestCache(t, CacheOptions[int, int]{
		Capacity: 3, Shards: 1,
		OnEvict: func(k, _ int) { evicted = append(evicted, k) },
	})
	if _, _, err := c.Add(1, 10, 1, true); err != nil { // pinned, and the coldest
		t.Fatal(err)
	}
	for k := 2; k <= 6; k++ {
		if _, _, err := c.Add(k, 10*k, 1, false); err != nil {
			t.Fatal(err)
		}
	}
	if want := []int{2, 3, 4}; !slices.Equal(evicted, want) {
		t.Fatalf("evicted %v, want %v", evicted, want)
	}
	if v, ok := c.Get(1); !ok || v != 10 {
		t.Fatalf("pinned entry: Get(1) = %d, %v", v, ok)
	}
	// Pin everything: nothing can make room.
	for _, k := range []int{5, 6} {
		if _, ok := c.Pin(k); !ok {
			t.Fatalf("Pin(%d) missed", k)
		}
	}
	if _, _, err := c.Add(7, 70, 1, false); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Add into a pinned-full cache: %v, want ErrNoSpace", err)
	}
	if st := c.Stats(); st.PinnedWeight != 3 || st.Weight != 3 || st.Evictions != 3 {
		t.Fatalf("stats %+v", st)
	}
	checkCache(t, c)
}

func TestCacheAddExisting(t *testing.T) {
	c := newTestCache(t, CacheOptions[string, string]{Capacity: 10})
	if v, ins, err := c.Add("k", "first", 4, true); err != nil || !ins || v != "first" {
		t.Fatalf("Add = %q, %v, %v", v, ins, err)
	}
	// A second Add returns the stored value, stores nothing and pins again.
	if v, ins, err := c.Add("k", "second", 7, true); err != nil || ins || v != "first" {
		t.Fatalf("second Add = %q, %v, %v; want the stored value", v, ins, err)
	}
	if v, ins, err := c.Add("k", "third", 1, false); err != nil || ins || v != "first" {
		t.Fatalf("third Add = %q, %v, %v", v, ins, err)
	}
	if st := c.Stats(); st.Weight != 4 || st.PinnedWeight != 4 || st.Entries != 1 || st.Hits != 0 || st.Misses != 0 {
		t.Fatalf("stats %+v; Add counts no hits", st)
	}
	// Two pins: two Unpins, then no more.
	for i := range 2 {
		if _, err := c.Remove("k"); !errors.Is(err, ErrPinned) {
			t.Fatalf("Remove with %d pins: %v, want ErrPinned", 2-i, err)
		}
		if err := c.Unpin("k"); err != nil {
			t.Fatalf("Unpin %d: %v", i, err)
		}
	}
	if err := c.Unpin("k"); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("third Unpin: %v, want ErrNotPinned", err)
	}
	if st := c.Stats(); st.PinnedWeight != 0 {
		t.Fatalf("pinned weight %d after the last Unpin", st.PinnedWeight)
	}
	checkCache(t, c)
}

func TestCacheNoSpaceEvictsNothing(t *testing.T) {
	for _, shards := range []int{1, 4, 0} {
		t.Run(fmt.Sprint("shards=", shards), func(t *testing.T) {
			evictions := 0
			c := newTestCache(t, CacheOptions[int, int]{
				Capacity: 400, Shards: shards,
				OnEvict: func(int, int) { evictions++ },
			})
			for k := range 4 {
				if _, _, err := c.Add(k, k, 100, k < 2); err != nil { // 0 and 1 pinned
					t.Fatal(err)
				}
			}
			_, _, err := c.Add(9, 9, 300, false)
			if !errors.Is(err, ErrNoSpace) {
				t.Fatalf("Add of 300 with 200 of 400 pinned: %v, want ErrNoSpace", err)
			}
			st := c.Stats()
			if evictions != 0 || st.Evictions != 0 || st.Entries != 4 || st.Weight != 400 || c.Len() != 4 {
				t.Fatalf("the failed Add evicted: %d evictions, stats %+v", evictions, st)
			}
			// 200 fits by evicting both unpinned entries.
			if _, ins, err := c.Add(9, 9, 200, false); err != nil || !ins {
				t.Fatalf("Add of 200: %v, %v", ins, err)
			}
			if st := c.Stats(); evictions != 2 || st.Evictions != 2 || st.EvictedWeight != 200 || st.Weight != 400 {
				t.Fatalf("%d evictions, stats %+v", evictions, st)
			}
			for k := range 2 {
				if !c.Contains(k) {
					t.Errorf("pinned %d evicted", k)
				}
			}
			checkCache(t, c)
		})
	}
}

func TestCacheWeightErrors(t *testing.T) {
	c := newTestCache(t, CacheOptions[int, int]{Capacity: 100})
	if _, _, err := c.Add(1, 1, 101, false); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Add of 101 into 100: %v, want ErrTooLarge", err)
	}
	if _, _, err := c.AddWait(context.Background(), 1, 1, 101, false); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("AddWait of 101 into 100: %v, want ErrTooLarge", err)
	}
	if _, _, err := c.Add(1, 1, -1, false); err == nil {
		t.Fatal("Add of a negative weight succeeded")
	}
	if _, ins, err := c.Add(1, 1, 100, false); err != nil || !ins {
		t.Fatalf("Add of the whole capacity: %v, %v", ins, err)
	}
	if _, ins, err := c.Add(2, 2, 0, true); err != nil || !ins {
		t.Fatalf("Add of weight 0: %v, %v", ins, err)
	}
	if st := c.Stats(); st.Entries != 2 || st.Weight != 100 {
		t.Fatalf("stats %+v", st)
	}
}

func TestCacheUnpinAndRemoveErrors(t *testing.T) {
	evictions := 0
	c := newTestCache(t, CacheOptions[int, string]{Capacity: 10, OnEvict: func(int, string) { evictions++ }})
	if err := c.Unpin(1); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("Unpin of an absent key: %v, want ErrNotPinned", err)
	}
	if _, err := c.Remove(1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Remove of an absent key: %v, want ErrNotFound", err)
	}
	c.Add(1, "one", 3, false)
	if err := c.Unpin(1); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("Unpin of an unpinned key: %v, want ErrNotPinned", err)
	}
	c.Pin(1)
	if _, err := c.Remove(1); !errors.Is(err, ErrPinned) {
		t.Fatalf("Remove of a pinned key: %v, want ErrPinned", err)
	}
	c.Unpin(1)
	if v, err := c.Remove(1); err != nil || v != "one" {
		t.Fatalf("Remove = %q, %v", v, err)
	}
	if _, err := c.Remove(1); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Remove: %v, want ErrNotFound", err)
	}
	if st := c.Stats(); evictions != 0 || st.Evictions != 0 || st.Weight != 0 || st.Entries != 0 {
		t.Fatalf("Remove: %d OnEvict calls, stats %+v", evictions, st)
	}
	checkCache(t, c)
}

func TestCacheStats(t *testing.T) {
	c := newTestCache(t, CacheOptions[int, int]{Capacity: 10, Shards: 2})
	c.Add(1, 1, 4, true)  // pinned
	c.Add(2, 2, 3, false) //
	c.Add(3, 3, 2, false) // weight 9
	c.Get(1)              // hit
	c.Get(2)              // hit
	c.Get(7)              // miss
	c.Pin(3)              // hit, pinned 6
	c.Pin(8)              // miss
	c.Contains(2)         // not counted
	c.Add(4, 4, 4, false) // evicts 2 (3): weight 10
	want := CacheStats{Capacity: 10, Weight: 10, PinnedWeight: 6, Entries: 3,
		Hits: 3, Misses: 2, Evictions: 1, EvictedWeight: 3}
	if st := c.Stats(); st != want {
		t.Fatalf("stats\n got %+v\nwant %+v", st, want)
	}
	c.Unpin(1)
	c.Unpin(3)
	c.Remove(4)
	want.Weight, want.PinnedWeight, want.Entries = 6, 0, 2
	if st := c.Stats(); st != want {
		t.Fatalf("stats\n got %+v\nwant %+v", st, want)
	}
	if c.Len() != 2 {
		t.Fatalf("Len = %d", c.Len())
	}
}

// TestCacheOnEvict checks that OnEvict runs with no lock held (it calls back
// into the cache, including Stats, which takes every lock) and sees every
// evicted entry exactly once.
func TestCacheOnEvict(t *testing.T) {
	evicted := map[int]int{}
	var c *Cache[int, int]
	c = newTestCache(t, CacheOptions[int, int]{
		Capacity: 16, Shards: 4,
		OnEvict: func(k, v int) {
			if v != k*10 {
				t.Errorf("OnEvict(%d, %d): wrong value", k, v)
			}
			evicted[k]++
			// (A key of 1000 and up may be back already: an earlier OnEvict
			// of the same batch adds them.)
			if k < 1000 && c.Contains(k) {
				t.Errorf("OnEvict(%d): still stored", k)
			}
			c.Get(k)
			if st := c.Stats(); st.Weight > st.Capacity {
				t.Errorf("stats %+v", st)
			}
			if k%7 == 0 { // put some back: Add from within OnEvict
				c.Add(k+1000, (k+1000)*10, 1, false)
			}
		},
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		r := rand.New(rand.NewPCG(1, 1))
		for range 2000 {
			k := r.IntN(64)
			c.Add(k, k*10, 1+int64(k%3), false)
			c.Get(r.IntN(64))
		}
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("deadlock: OnEvict called with a lock held")
	}
	st := c.Stats()
	var n uint64
	for _, times := range evicted {
		n += uint64(times)
	}
	if n != st.Evictions {
		t.Fatalf("OnEvict called %d times, %d evictions", n, st.Evictions)
	}
	checkCache(t, c)
}

func TestCacheCrossShard(t *testing.T) {
	// Keys below 100 go to shard 0, the others to shard 1.
	var evicted []int
	c := newTestCache(t, CacheOptions[int, int]{
		Capacity: 4, Shards: 2,
		Hash:    cacheShardHash(1, func(k int) int { return min(k/100, 1) }),
		OnEvict: func(k, _ int) { evicted = append(evicted, k) },
	})
	if got := c.shardIndexOf(100); got != 1 {
		t.Fatalf("key 100 in shard %d, want 1", got)
	}
	c.Add(1, 1, 1, true) // shard 0, pinned
	c.Add(2, 2, 1, true)
	c.Add(101, 101, 1, false) // shard 1
	c.Add(102, 102, 1, false)
	c.Get(101) // 102 is shard 1's coldest
	// Shard 0 has nothing to evict: the room comes from shard 1's victim.
	if _, ins, err := c.Add(3, 3, 1, false); err != nil || !ins {
		t.Fatalf("Add(3): %v, %v", ins, err)
	}
	if !slices.Equal(evicted, []int{102}) {
		t.Fatalf("evicted %v, want [102]", evicted)
	}
	// Own shard first: 3 is now shard 0's only victim.
	c.Add(4, 4, 1, false)
	if !slices.Equal(evicted, []int{102, 3}) {
		t.Fatalf("evicted %v, want [102 3]", evicted)
	}
	// Weight 2 needs shard 0's 4 and shard 1's 101.
	if _, ins, err := c.Add(5, 5, 2, false); err != nil || !ins {
		t.Fatalf("Add(5): %v, %v", ins, err)
	}
	if !slices.Equal(evicted, []int{102, 3, 4, 101}) {
		t.Fatalf("evicted %v, want [102 3 4 101]", evicted)
	}
	checkCache(t, c)
}

// shardIndexOf returns the index of k's shard.
func (c *Cache[K, V]) shardIndexOf(k K) int {
	_, s := c.locate(k)
	for i := range c.shards {
		if &c.shards[i] == s {
			return i
		}
	}
	panic("shard not in cache")
}

func TestCacheAddWait(t *testing.T) {
	c := newTestCache(t, CacheOptions[int, int]{Capacity: 2, Shards: 2})
	c.Add(1, 1, 1, true)
	c.Add(2, 2, 1, true)
	waitForWaiters := func(n int64) {
		t.Helper()
		for c.waiters.Load() != n {
			time.Sleep(time.Millisecond)
		}
	}

	t.Run("unpin", func(t *testing.T) {
		type result struct {
			v   int
			ins bool
			err error
		}
		res := make(chan result)
		go func() {
			v, ins, err := c.AddWait(context.Background(), 3, 3, 1, true)
			res <- result{v, ins, err}
		}()
		waitForWaiters(1)
		select {
		case r := <-res:
			t.Fatalf("AddWait returned %+v while everything was pinned", r)
		case <-time.After(10 * time.Millisecond):
		}
		if err := c.Unpin(1); err != nil {
			t.Fatal(err)
		}
		if r := <-res; r.err != nil || !r.ins || r.v != 3 {
			t.Fatalf("AddWait = %+v", r)
		}
		if c.Contains(1) || !c.Contains(3) {
			t.Fatal("AddWait did not take 1's room")
		}
	})

	t.Run("cancel", func(t *testing.T) { // 2 and 3 are pinned
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error)
		go func() {
			_, _, err := c.AddWait(ctx, 4, 4, 1, false)
			errc <- err
		}()
		waitForWaiters(1)
		cancel()
		err := <-errc
		if !errors.Is(err, context.Canceled) || !errors.Is(err, ErrNoSpace) {
			t.Fatalf("AddWait after cancel: %v, want context.Canceled and ErrNoSpace", err)
		}
		ctx, cancel = context.WithTimeout(context.Background(), 5*time.Millisecond)
		defer cancel()
		if _, _, err := c.AddWait(ctx, 4, 4, 1, false); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("AddWait past the deadline: %v, want context.DeadlineExceeded", err)
		}
		if c.waiters.Load() != 0 {
			t.Fatalf("%d waiters left", c.waiters.Load())
		}
	})

	t.Run("stored by another", func(t *testing.T) {
		// Weight 2 cannot fit while 3 is pinned; an Add of weight 1 of the
		// same key can, and the waiter then finds it.
		res := make(chan bool)
		go func() {
			_, ins, err := c.AddWait(context.Background(), 5, 5, 2, true)
			if err != nil {
				t.Error(err)
			}
			res <- ins
		}()
		waitForWaiters(1)
		if err := c.Unpin(2); err != nil { // room for 1, not 2
			t.Fatal(err)
		}
		if _, ins, err := c.Add(5, 50, 1, false); err != nil || !ins {
			t.Fatalf("Add(5): %v, %v", ins, err)
		}
		if ins := <-res; ins {
			t.Fatal("AddWait inserted a key already stored")
		}
		if err := c.Unpin(5); err != nil { // the waiter's pin
			t.Fatal(err)
		}
	})
	checkCache(t, c)
}

// TestCacheConcurrentReads races lock-free Gets against writers that insert,
// evict, remove and grow the tables, and checks that every value read is the
// one stored under its key.
func TestCacheConcurrentReads(t *testing.T) {
	const keys = 4096
	c := newTestCache(t, CacheOptions[int, [2]int]{Capacity: keys / 2, Shards: 4})
	var writers, readers sync.WaitGroup
	var stop atomic.Bool
	for g := range 2 {
		writers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			for i := 0; !stop.Load(); i++ {
				k := r.IntN(keys)
				switch i % 3 {
				case 0, 1:
					c.Add(k, [2]int{k, -k}, 1, false)
				default:
					c.Remove(k)
				}
			}
		})
	}
	var hits atomic.Int64
	for g := range 2 {
		readers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for range 50_000 {
				k := r.IntN(keys)
				if v, ok := c.Get(k); ok {
					hits.Add(1)
					if v != [2]int{k, -k} {
						t.Errorf("Get(%d) = %v", k, v)
						return
					}
				}
			}
		})
	}
	readers.Wait()
	stop.Store(true)
	writers.Wait()
	if hits.Load() == 0 {
		t.Fatal("no Get hit")
	}
	checkCache(t, c)
}

// TestCacheStress runs goroutines doing random Gets, Pins, Unpins, Adds,
// AddWaits and Removes over a small key space with a capacity the pins can
// exhaust, sampling Stats as it goes, and checks the books at the end.
func TestCacheStress(t *testing.T) {
	const (
		goroutines = 8
		keys       = 96
		capacity   = 64
	)
	// 100,000 ops per goroutine take about 3 s under the race detector on
	// 2 cores, so the count is the same with and without it.
	ops := 100_000
	if testing.Short() {
		ops /= 10
	}
	weight := func(k int) int64 { return 1 + int64(k%4) }
	var inserted, removed, evicted atomic.Int64
	c := newTestCache(t, CacheOptions[int, int]{
		Capacity: capacity, Shards: 4,
		OnEvict: func(k, v int) {
			if v>>16 != k {
				t.Errorf("OnEvict(%d, %#x): not its value", k, v)
			}
			evicted.Add(1)
		},
	})
	var wg sync.WaitGroup
	var stop atomic.Bool
	wg.Go(func() { // sample the capacity while the others run
		for !stop.Load() {
			if st := c.Stats(); st.Weight > st.Capacity || st.PinnedWeight > st.Weight {
				t.Errorf("stats %+v", st)
				return
			}
			if u := c.used.Load(); u > capacity {
				t.Errorf("used %d > capacity", u)
				return
			}
			time.Sleep(100 * time.Microsecond)
		}
	})
	var workers sync.WaitGroup
	for g := range goroutines {
		workers.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 42))
			pins := map[int]int{} // this goroutine's pins by key
			check := func(k, v int) {
				if v>>16 != k {
					t.Errorf("key %d: value %#x is not its own", k, v)
				}
			}
			for i := range ops {
				k := r.IntN(keys)
				switch op := r.IntN(100); {
				case op < 40:
					if v, ok := c.Get(k); ok {
						check(k, v)
					}
				case op < 55:
					if v, ok := c.Pin(k); ok {
						check(k, v)
						pins[k]++
					}
				case op < 75:
					for k := range pins { // release one pin, the oldest key first
						if err := c.Unpin(k); err != nil {
							t.Errorf("Unpin(%d) with %d pins held: %v", k, pins[k], err)
						}
						if pins[k]--; pins[k] == 0 {
							delete(pins, k)
						}
						break
					}
				case op < 93:
					pin := op < 85
					v, ins, err := c.Add(k, k<<16|g<<8|i&0xff, weight(k), pin)
					if err != nil {
						if !errors.Is(err, ErrNoSpace) {
							t.Errorf("Add(%d): %v", k, err)
						}
						continue
					}
					check(k, v)
					if ins {
						inserted.Add(1)
					}
					if pin {
						pins[k]++
					}
				case op < 95:
					ctx, cancel := context.WithTimeout(context.Background(), 50*time.Microsecond)
					_, ins, err := c.AddWait(ctx, k, k<<16, weight(k), false)
					cancel()
					if err == nil && ins {
						inserted.Add(1)
					} else if err != nil && !errors.Is(err, context.DeadlineExceeded) {
						t.Errorf("AddWait(%d): %v", k, err)
					}
				default:
					if v, err := c.Remove(k); err == nil {
						check(k, v)
						removed.Add(1)
					} else if !errors.Is(err, ErrPinned) && !errors.Is(err, ErrNotFound) {
						t.Errorf("Remove(%d): %v", k, err)
					}
				}
			}
			for k, n := range pins {
				for range n {
					if err := c.Unpin(k); err != nil {
						t.Errorf("final Unpin(%d): %v", k, err)
					}
				}
			}
		})
	}
	workers.Wait()
	stop.Store(true)
	wg.Wait()

	st := c.Stats()
	var present, presentWeight int64
	for k := range keys {
		if c.Contains(k) {
			present++
			presentWeight += weight(k)
		}
	}
	if st.PinnedWeight != 0 {
		t.Errorf("pinned weight %d with every pin returned", st.PinnedWeight)
	}
	if st.Weight != presentWeight || st.Entries != present || int64(c.Len()) != present || st.Weight > st.Capacity {
		t.Errorf("stats %+v; %d entries of weight %d present, Len %d", st, present, presentWeight, c.Len())
	}
	if ev := evicted.Load(); uint64(ev) != st.Evictions || ev+present+removed.Load() != inserted.Load() {
		t.Errorf("%d evicted (stats: %d) + %d present + %d removed != %d inserted",
			ev, st.Evictions, present, removed.Load(), inserted.Load())
	}
	if st.Evictions == 0 || removed.Load() == 0 {
		t.Errorf("the stress did not evict or remove: %+v", st)
	}
	checkCache(t, c)
	t.Logf("%d goroutines × %d ops: %+v, %d inserted, %d removed", goroutines, ops, st, inserted.Load(), removed.Load())
}

func TestCacheGetAllocs(t *testing.T) {
	c := newTestCache(t, CacheOptions[int, int]{Capacity: 100})
	for k := range 100 {
		c.Add(k, k, 1, false)
	}
	k := 0
	if n := testing.AllocsPerRun(1000, func() { c.Get(k % 200); k++ }); n != 0 {
		t.Errorf("Get: %v allocs", n)
	}
	// An Add that evicts allocates its entry and nothing else, OnEvict set
	// or not (the victims wait on the stack).
	for _, onEvict := range []func(int, int){nil, func(int, int) {}} {
		c := newTestCache(t, CacheOptions[int, int]{Capacity: 100, OnEvict: onEvict})
		k := 0
		add := func() {
			c.Add(k, k, 1, false)
			k++
		}
		for range 1000 { // reach the steady state: tables and free lists sized
			add()
		}
		if n := testing.AllocsPerRun(1000, add); n > 1 {
			t.Errorf("Add evicting (OnEvict %v): %v allocs, want 1", onEvict != nil, n)
		}
	}
	s := newTestCache(t, CacheOptions[string, int]{Capacity: 100})
	s.Add("key", 1, 1, false)
	if n := testing.AllocsPerRun(1000, func() { s.Get("key"); s.Get("other") }); n != 0 {
		t.Errorf("Get with the default hash: %v allocs", n)
	}
}

func TestCacheEvictOne(t *testing.T) {
	var evicted []int
	c, err := NewCache(CacheOptions[int, int]{Capacity: 10, Shards: 1, OnEvict: func(k, _ int) { evicted = append(evicted, k) }})
	if err != nil {
		t.Fatal(err)
	}
	for k := range 3 {
		if _, _, err := c.Add(k, k, 1, k == 2); err != nil {
			t.Fatal(err)
		}
	}
	if !c.EvictOne() || !c.EvictOne() {
		t.Fatal("EvictOne found no victim among two unpinned entries")
	}
	if c.EvictOne() {
		t.Fatal("EvictOne evicted a pinned entry")
	}
	if len(evicted) != 2 || evicted[0] != 0 || evicted[1] != 1 {
		t.Fatalf("evicted %v, want [0 1] (least recently used first)", evicted)
	}
	if s := c.Stats(); s.Weight != 1 || s.Entries != 1 || s.Evictions != 2 {
		t.Fatalf("stats %+v", s)
	}
}

func TestCacheKeys(t *testing.T) {
	c, err := NewCache(CacheOptions[int, int]{Capacity: 1000, Shards: 4, Hash: func(k int) uint64 { return uint64(k) }})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]bool{}
	for k := range 300 {
		if _, _, err := c.Add(k, k, 1, false); err != nil {
			t.Fatal(err)
		}
		want[k] = true
	}
	for k := range 100 {
		if _, err := c.Remove(k); err != nil {
			t.Fatal(err)
		}
		delete(want, k)
	}
	keys := c.Keys()
	if len(keys) != len(want) {
		t.Fatalf("%d keys, want %d", len(keys), len(want))
	}
	for _, k := range keys {
		if !want[k] {
			t.Fatalf("key %d is not stored", k)
		}
		delete(want, k)
	}
}
