package storage

import (
	"errors"
	"fmt"
	"math/bits"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"
)

// Errors of Buddy and Arena.
var (
	// ErrOutOfMemory means no free block was large enough (and aligned as
	// asked) when the request came. Freeing or evicting may help.
	ErrOutOfMemory = errors.New("arena out of memory")
	// ErrInvalidFree means Free was given an offset at which no live block
	// starts: freed already, never handed out, inside a live block, or out of
	// bounds. The allocator's state is unchanged.
	ErrInvalidFree = errors.New("invalid free")
	// ErrInvalidSize means a request that no state of the arena could satisfy:
	// a size below 1 or above the arena, or an alignment that is not a power of
	// two or exceeds the arena. Unlike ErrOutOfMemory, evicting cannot help.
	ErrInvalidSize = errors.New("invalid allocation size")
)

const (
	buddyDefaultMinBlock = 64
	// buddyMaxMinBlock keeps an order-0 block's slack within the 25 bits a
	// start word has for it (see Buddy.meta).
	buddyMaxMinBlock = 1 << 25
	// buddyMaxSlots bounds Size/MinBlock, and so the metadata, at 256 MiB.
	buddyMaxSlots = 1 << 26
	// buddyMaxOrders is the number of block sizes of the largest arena.
	buddyMaxOrders = 27
	// buddyCacheMax is the most free blocks of one order a P caches.
	buddyCacheMax = 16
)

// The word Buddy.meta holds for each MinBlock slot. Zero: no live block
// starts at the slot. A start word (bit 31 clear, not zero) describes the live
// block that starts there: its order plus one in bits 0-4, and its slack
// (block size minus requested size) in bits 6-30, with bits 25 and up of the
// slack in the next slot's word if bit 5 is set. Such a next-slot word has
// bit 31 set, so it never reads as a start; it may outlive its block, which is
// harmless: it still says "no block starts here" until a block that does
// start there overwrites it.
const (
	metaOrderMask = 1<<5 - 1
	metaHigh      = 1 << 5
	metaSlackBits = 25
	metaSlackMask = 1<<metaSlackBits - 1
	metaInterior  = 1 << 31
)

// BuddyOptions configure a Buddy.
type BuddyOptions struct {
	// Size is the arena size in bytes, rounded up to a power of two; it must
	// be at least MinBlock and at most 2^26 × MinBlock (the metadata takes 4
	// bytes per MinBlock: 6.25% of the arena at 64 bytes, 0.1% at 4 KiB).
	Size int64
	// MinBlock is the smallest block, a power of two from 64 (a cache line,
	// the default) to 32 MiB. Every block is aligned to at least MinBlock.
	MinBlock int64
}

// BuddyStats are a consistent snapshot of a Buddy.
type BuddyStats struct {
	// Size and MinBlock are the arena's, after rounding.
	Size, MinBlock int64
	// Used is the bytes in live blocks (block sizes, not requested sizes).
	Used int64
	// Peak is the high-water mark of Used. It is exact while the allocating
	// and freeing happen on one P; otherwise it may exceed the true peak by up
	// to Size/16 (see Buddy), but it never falls below it.
	Peak int64
	// Requested is the bytes asked for by the live allocations; Used minus
	// Requested is the internal fragmentation.
	Requested int64
	// Allocs and Frees count successful calls; Failures counts requests that
	// failed with ErrOutOfMemory.
	Allocs, Frees, Failures uint64
	// FreeBytesByOrder[o] is the free bytes in blocks of MinBlock<<o, after
	// every free block has merged with its free buddy.
	FreeBytesByOrder []int64
	// LargestFree is the size of the largest free block: the largest request
	// that can succeed.
	LargestFree int64
	// Fragmentation is the external fragmentation: 1 - LargestFree / free
	// bytes, 0 when nothing or everything is free.
	Fragmentation float64
}

// Buddy is a binary buddy allocator over offsets [0, Size): block sizes are
// powers of two from MinBlock to Size, and a block of size s lies at an offset
// that is a multiple of s. It hands out offsets, not memory (Arena puts it
// over a []byte), and is safe for concurrent use.
//
// # Design
//
// The free blocks live in a core guarded by one mutex: for every order a
// bitmap with one bit per block of that order, under summary levels of one bit
// per 64-bit word, so finding the lowest free block of an order is a walk of
// at most five words, and testing or clearing a buddy is one. A free merges
// with its buddy while the buddy is free; an allocation takes the lowest free
// block of the smallest order that fits and splits it, so live blocks pack at
// the low end of the arena.
//
// One mutex does not scale: measured on two cores, two goroutines taking a
// shared lock or adding to a shared counter on every operation get less done
// than one, because every operation moves the lock's cache line between the
// cores. So the operations themselves touch nothing shared. Every P (the
// runtime's processor, GOMAXPROCS of them) has a cache: for each order a
// small stack of free blocks and the P's share of the counters, behind a
// mutex that only that P takes in the common case, so the lock and its data
// stay in that core's cache. Allocate pops from the calling P's stack for the
// order and Free pushes onto it; only an empty stack (refilled with half its
// capacity from the core) or a full one (half of it, the oldest, returned to
// the core, where it merges) takes the core's mutex. A free block in a cache
// is merely unmerged, never lost: when the core cannot satisfy a request,
// Allocate returns every cache to the core and tries again before failing,
// and Stats does the same before reporting. The caches hold at most 1/16 of
// the arena together (and at most 16 blocks of an order each), so they cannot
// starve large requests for long. A P is
// found with runtime.procPin, the call sync.Pool makes (linked by name: it is
// on the runtime's list of symbols kept for such use, go.dev/issue/67401);
// pinning and unpinning cost about 6 ns here, where a sync.Pool Get and Put
// of a cache handle, the portable way to find a P-local cache, costs about
// 15 ns. sync.Pool cannot hold the blocks themselves: the garbage collector
// empties it, and the blocks in it would be lost.
//
// Whether a live block starts at an offset, its order and its requested size
// are kept in one atomic word per MinBlock slot, written when the block is
// handed out and cleared by a compare-and-swap when it is freed, so Free
// validates without a lock, and of two racing frees of one block exactly one
// succeeds. Both touch only the block's own word.
//
// The counters (Used, Requested, Allocs, Frees) are per P and summed by
// Stats. Peak cannot be: the maximum of a sum over time needs every change in
// one place. Each P instead publishes an upper bound of its Used to a shared
// total, raising it whenever its Used exceeds the bound and lowering it only
// once its Used falls below the bound by more than its cache budget; Peak is
// the highest total published, and Stats publishes the exact Used. A P
// cycling through a window of blocks thus writes the shared line once, not on
// every operation. (Where one P allocates and another frees, as in a
// pipeline, the allocating P's Used only grows and it adds to the total on
// every allocation, but the freeing P lowers it only once per cache budget,
// so the line rarely changes cores.) With one P the bound rises exactly to
// every new high, so Peak is exact; with several, Peak can exceed the true
// peak by at most their slack together: Size/16, or one MinBlock per P if
// that is more.
//
// Memory: 4 bytes per MinBlock for the slot words, about 2 bits per MinBlock
// for the bitmaps, and 2 KiB per P.
type Buddy struct {
	size     int64
	minBlock int64
	minShift uint // log2(minBlock)
	top      int  // order of the whole arena: size == minBlock << top
	// cacheCap[o] is how many free blocks of order o one P may cache; blocks
	// of an order with capacity 0 go to and come from the core directly.
	cacheCap [buddyMaxOrders]uint8
	// cacheBudget bounds the bytes one P caches over all orders: Size/16
	// shared by the Ps.
	cacheBudget int64
	// foldSlack is how far a P's Used may fall below what it has published
	// to approxUsed before it lowers that (see Design).
	foldSlack int64

	// meta holds one word per MinBlock slot; see the meta constants. It is
	// accessed only atomically: a start word is stored by the allocation
	// that owns the block (after any next-slot word) and cleared by a
	// CompareAndSwap in Free, which thereby takes the block back.
	meta []atomic.Uint32

	// caches has one entry per P at NewBuddy; P p uses caches[p%len].
	caches []buddyCache

	_ [64]byte // keep the read-mostly fields above off mu's cache line

	// mu guards core. Lock order: a cache's mu before mu. Only Stats holds
	// more than one cache's mu, taking them in index order.
	mu   sync.Mutex
	core buddyCore

	// approxUsed is the sum of every cache's folded: an upper bound of Used.
	approxUsed atomic.Int64
	peak       atomic.Int64 // highest approxUsed published, or Used seen by Stats
	failures   atomic.Uint64
}

// buddyCache is one P's cache, padded to whole cache lines so that two Ps
// never write the same line.
type buddyCache struct {
	buddyCacheState
	_ [(128 - unsafe.Sizeof(buddyCacheState{})%128) % 128]byte
}

type buddyCacheState struct {
	mu sync.Mutex
	// The fields below are guarded by mu.

	// blocks[o][:n[o]] are the slots of the free blocks of order o this P
	// caches, oldest first.
	n      [buddyMaxOrders]uint8
	blocks [buddyMaxOrders][buddyCacheMax]uint32
	cached int64 // bytes in blocks, at most Buddy.cacheBudget
	// This P's share of the counters. used and requested go negative on a P
	// that frees more than it allocates; the sums are what count.
	used, requested int64
	allocs, frees   uint64
	// folded is what this P has added to Buddy.approxUsed: at least used,
	// and at most used + foldSlack.
	folded int64
}

// NewBuddy returns a Buddy with the whole arena free.
func NewBuddy(o BuddyOptions) (*Buddy, error) {
	return newBuddy(o, runtime.GOMAXPROCS(0))
}

// newBuddy is NewBuddy with a given number of caches (tests use 1 to make a
// sequence of calls deterministic whichever P runs it).
func newBuddy(o BuddyOptions, caches int) (*Buddy, error) {
	minBlock := o.MinBlock
	if minBlock == 0 {
		minBlock = buddyDefaultMinBlock
	}
	if minBlock < buddyDefaultMinBlock || minBlock > buddyMaxMinBlock || minBlock&(minBlock-1) != 0 {
		return nil, fmt.Errorf("buddy: MinBlock %d: must be a power of two from %d to %d",
			o.MinBlock, buddyDefaultMinBlock, buddyMaxMinBlock)
	}
	if o.Size < minBlock {
		return nil, fmt.Errorf("buddy: Size %d: must be at least MinBlock (%d)", o.Size, minBlock)
	}
	if o.Size > minBlock*buddyMaxSlots {
		return nil, fmt.Errorf("buddy: Size %d: at most %d blocks of MinBlock (%d) are allowed, "+
			"as their metadata takes 4 bytes each; use a larger MinBlock", o.Size, buddyMaxSlots, minBlock)
	}
	minShift := uint(bits.TrailingZeros64(uint64(minBlock)))
	top := bits.Len64(uint64(o.Size-1)) - int(minShift) // o.Size-1 >= 63, so top >= 0
	size := minBlock << top
	b := &Buddy{
		size:     size,
		minBlock: minBlock,
		minShift: minShift,
		top:      top,
		meta:     make([]atomic.Uint32, size>>minShift),
		caches:   make([]buddyCache, max(caches, 1)),
		core:     newBuddyCore(top),
	}
	b.cacheBudget = size / 16 / int64(len(b.caches))
	b.foldSlack = max(b.cacheBudget, minBlock)
	for o := 0; o <= top; o++ {
		b.cacheCap[o] = uint8(min(b.cacheBudget/(minBlock<<o), buddyCacheMax))
	}
	return b, nil
}

// Allocate returns the offset and size of a free block of at least n bytes:
// the smallest power of two from MinBlock up that holds n.
func (b *Buddy) Allocate(n int64) (off, size int64, err error) {
	return b.allocate(n, 0)
}

// AllocateAligned is Allocate with the block's offset a multiple of align, a
// power of two (4096 for a page, say). A block is aligned to its own size
// already; a smaller block than align is cut from the start of a free block of
// at least align bytes, the rest of which stays free.
func (b *Buddy) AllocateAligned(n, align int64) (off, size int64, err error) {
	if align < 1 || align&(align-1) != 0 || align > b.size {
		return 0, 0, fmt.Errorf("buddy: allocate %d bytes aligned to %d: the alignment must be a power of two "+
			"no larger than the arena (%d bytes): %w", n, align, b.size, ErrInvalidSize)
	}
	return b.allocate(n, align)
}

func (b *Buddy) allocate(n, align int64) (int64, int64, error) {
	if n < 1 || n > b.size {
		return 0, 0, fmt.Errorf("buddy: allocate %d bytes: must be from 1 to the arena size (%d bytes): %w",
			n, b.size, ErrInvalidSize)
	}
	o := max(bits.Len64(uint64(n-1))-int(b.minShift), 0)
	size := b.minBlock << o
	// from is the smallest order the core may take the block from, and mask
	// the low bits of a cached slot that must be zero.
	from, mask := o, int64(0)
	if align > size {
		from = bits.TrailingZeros64(uint64(align)) - int(b.minShift)
		mask = align>>b.minShift - 1
	}

	c := b.localCache()
	c.mu.Lock()
	slot, ok := c.pop(o, mask)
	if ok {
		c.cached -= size
	} else {
		slot, ok = b.refill(c, o, from)
	}
	if !ok {
		// The free blocks may be sitting in caches, unmerged: give every cache
		// back to the core, then try the core once more.
		c.mu.Unlock()
		b.drain()
		b.mu.Lock()
		slot, ok = b.core.alloc(o, from)
		largest := b.core.largest()
		b.mu.Unlock()
		if !ok {
			b.failures.Add(1)
			if align > size {
				return 0, 0, fmt.Errorf("buddy: allocate %d bytes aligned to %d: no free block of %d bytes or more; "+
					"the largest free block is %d bytes: %w", n, align, align, b.largestBytes(largest), ErrOutOfMemory)
			}
			return 0, 0, fmt.Errorf("buddy: allocate %d bytes: no free block of %d bytes or more; "+
				"the largest free block is %d bytes: %w", n, size, b.largestBytes(largest), ErrOutOfMemory)
		}
		c.mu.Lock()
	}
	c.used += size
	c.requested += n
	c.allocs++
	if c.used > c.folded {
		b.foldLocked(c)
	}
	c.mu.Unlock()
	b.markLive(slot, o, size-n)
	return slot << b.minShift, size, nil
}

// Free returns the block at off, merging it with its free buddies. Double
// frees, offsets never handed out (interior offsets of a live block included)
// and out-of-bounds offsets return errors wrapping ErrInvalidFree and change
// nothing. Like any allocator that is handed offsets, it cannot tell a stale
// free from a valid one once the offset has been handed out again.
func (b *Buddy) Free(off int64) error {
	return b.free(off, nil)
}

// free is Free into the cache c, or into the calling P's if c is nil.
func (b *Buddy) free(off int64, c *buddyCache) error {
	if off < 0 || off >= b.size {
		return fmt.Errorf("buddy: free offset %d: outside the arena [0, %d): %w", off, b.size, ErrInvalidFree)
	}
	if off&(b.minBlock-1) != 0 {
		return fmt.Errorf("buddy: free offset %d: not a multiple of MinBlock (%d), so no block starts there: %w",
			off, b.minBlock, ErrInvalidFree)
	}
	slot := off >> b.minShift
	w := b.meta[slot].Load()
	if w == 0 || w&metaInterior != 0 || !b.meta[slot].CompareAndSwap(w, 0) {
		return fmt.Errorf("buddy: free offset %d: no live block starts there "+
			"(freed already, never handed out, or inside a block): %w", off, ErrInvalidFree)
	}
	// The swap made the block this call's: no one can allocate it, so the
	// next slot's word is still the one stored with w.
	o := int(w&metaOrderMask) - 1
	slack := int64(w>>6) & metaSlackMask
	if w&metaHigh != 0 {
		slack |= int64(b.meta[slot+1].Load()&^metaInterior) << metaSlackBits
	}
	size := b.minBlock << o

	if c == nil {
		c = b.localCache()
	}
	c.mu.Lock()
	if c.n[o] < b.cacheCap[o] && c.cached+size <= b.cacheBudget || b.makeRoom(c, o) {
		c.blocks[o][c.n[o]] = uint32(slot)
		c.n[o]++
		c.cached += size
	} else {
		b.mu.Lock()
		b.core.free(slot, o)
		b.mu.Unlock()
	}
	c.used -= size
	c.requested -= size - slack
	c.frees++
	if c.used < c.folded-b.foldSlack {
		b.foldLocked(c)
	}
	c.mu.Unlock()
	return nil
}

// Stats returns a snapshot of the allocator. It first returns every cached
// block to the core, where it merges, so the free figures describe the arena
// as if no cache existed. It briefly stops all allocation; call it for
// reports, not per operation.
func (b *Buddy) Stats() BuddyStats {
	for i := range b.caches {
		b.caches[i].mu.Lock()
	}
	b.mu.Lock()
	s := BuddyStats{
		Size:             b.size,
		MinBlock:         b.minBlock,
		Failures:         b.failures.Load(),
		FreeBytesByOrder: make([]int64, b.top+1),
	}
	for i := range b.caches {
		c := &b.caches[i]
		b.drainLocked(c, -1)
		s.Used += c.used
		s.Requested += c.requested
		s.Allocs += c.allocs
		s.Frees += c.frees
		// Every cache is locked: publish the exact Used.
		c.folded = c.used
	}
	b.approxUsed.Store(s.Used)
	b.raisePeak(s.Used)
	var free int64
	for o := range s.FreeBytesByOrder {
		s.FreeBytesByOrder[o] = b.core.count[o] * (b.minBlock << o)
		free += s.FreeBytesByOrder[o]
	}
	s.LargestFree = b.largestBytes(b.core.largest())
	b.mu.Unlock()
	for i := range b.caches {
		b.caches[i].mu.Unlock()
	}
	s.Peak = b.peak.Load()
	if free > 0 {
		s.Fragmentation = 1 - float64(s.LargestFree)/float64(free)
	}
	return s
}

// largestBytes is the size of a block of order o, or 0 for o < 0.
func (b *Buddy) largestBytes(o int) int64 {
	if o < 0 {
		return 0
	}
	return b.minBlock << o
}

// localCache returns the calling P's cache. The goroutine may move to
// another P right after; that costs only locality, as the cache has a mutex.
func (b *Buddy) localCache() *buddyCache {
	p := runtime_procPin()
	runtime_procUnpin()
	if p >= len(b.caches) { // GOMAXPROCS grew after NewBuddy
		p %= len(b.caches)
	}
	return &b.caches[p]
}

// markLive records that the block of order o at slot is handed out with the
// given slack. The block is the caller's, so no one else writes these words.
func (b *Buddy) markLive(slot int64, o int, slack int64) {
	w := uint32(o+1) | uint32(slack&metaSlackMask)<<6
	if hi := slack >> metaSlackBits; hi != 0 { // blocks of 64 MiB and more: o > 0, so slot+1 is inside
		b.meta[slot+1].Store(metaInterior | uint32(hi))
		w |= metaHigh
	}
	b.meta[slot].Store(w)
}

// refill takes a block of order o, aligned as a block of order from, from the
// core for c's P, and for an unaligned request stocks c's stack of order o to
// half its capacity, so the next requests of that order take no lock. The
// caller holds c.mu.
func (b *Buddy) refill(c *buddyCache, o, from int) (int64, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	slot, ok := b.core.alloc(o, from)
	if !ok || from != o {
		return slot, ok
	}
	stack := &c.blocks[o]
	n := c.n[o]
	size := b.minBlock << o
	for want := b.cacheCap[o] / 2; n < want && c.cached+size <= b.cacheBudget; n++ {
		s, ok := b.core.alloc(o, o)
		if !ok {
			break
		}
		stack[n] = uint32(s)
		c.cached += size
	}
	// The core hands out the lowest blocks first; reverse them so the stack
	// does too, and live blocks stay packed at the low end.
	for i, j := int(c.n[o]), int(n)-1; i < j; i, j = i+1, j-1 {
		stack[i], stack[j] = stack[j], stack[i]
	}
	c.n[o] = n
	return slot, true
}

// makeRoom makes room in c for a block of order o and reports true, unless
// that order is not cached at all. It returns the older half of c's blocks of
// that order to the core, and if c's budget is spent still, every block of
// other orders: those are left from an earlier workload, and would sit unused
// while blocks of order o went to and from the core. The caller holds c.mu.
func (b *Buddy) makeRoom(c *buddyCache, o int) bool {
	if b.cacheCap[o] == 0 {
		return false
	}
	b.flush(c, o)
	if c.cached+b.minBlock<<o > b.cacheBudget {
		b.mu.Lock()
		b.drainLocked(c, o)
		b.mu.Unlock()
	}
	return true
}

// flush returns the older half (rounded up) of c's blocks of order o to the
// core. The caller holds c.mu.
func (b *Buddy) flush(c *buddyCache, o int) {
	s := c.blocks[o][:c.n[o]]
	if len(s) == 0 {
		return
	}
	keep := len(s) / 2
	drop := len(s) - keep
	b.mu.Lock()
	for _, slot := range s[:drop] {
		b.core.free(int64(slot), o)
	}
	b.mu.Unlock()
	copy(s, s[drop:])
	c.n[o] = uint8(keep)
	c.cached -= int64(drop) * (b.minBlock << o)
}

// drain returns every cache's blocks to the core.
func (b *Buddy) drain() {
	for i := range b.caches {
		c := &b.caches[i]
		c.mu.Lock()
		b.mu.Lock()
		b.drainLocked(c, -1)
		b.mu.Unlock()
		c.mu.Unlock()
	}
}

// drainLocked returns c's blocks to the core, but for those of order keep.
// The caller holds c.mu and b.mu.
func (b *Buddy) drainLocked(c *buddyCache, keep int) {
	for o := 0; o <= b.top; o++ {
		if o == keep {
			continue
		}
		for _, slot := range c.blocks[o][:c.n[o]] {
			b.core.free(int64(slot), o)
		}
		c.n[o] = 0
	}
	c.cached = 0
	if keep >= 0 {
		c.cached = int64(c.n[keep]) * (b.minBlock << keep)
	}
}

// foldLocked publishes c's used to approxUsed (see Design). The caller holds
// c.mu.
func (b *Buddy) foldLocked(c *buddyCache) {
	total := b.approxUsed.Add(c.used - c.folded)
	c.folded = c.used
	b.raisePeak(total)
}

func (b *Buddy) raisePeak(v int64) {
	for p := b.peak.Load(); v > p && !b.peak.CompareAndSwap(p, v); p = b.peak.Load() {
	}
}

// pop takes the newest cached block of order o whose slot has the bits of
// mask clear. The caller holds c.mu.
func (c *buddyCache) pop(o int, mask int64) (int64, bool) {
	s := c.blocks[o][:c.n[o]]
	for i := len(s) - 1; i >= 0; i-- {
		if slot := s[i]; int64(slot)&mask == 0 {
			if i < len(s)-1 { // only for an aligned request
				copy(s[i:], s[i+1:])
			}
			c.n[o]--
			return int64(slot), true
		}
	}
	return 0, false
}

// buddyCore holds the free blocks that are in no cache, merged with their
// buddies. Slots and block indexes are in units of MinBlock and of the
// order's block size.
type buddyCore struct {
	bitmaps  []buddyBitmap // bitmaps[o] has bit i set iff block i of order o is free
	count    []int64       // count[o] is the number of bits set in bitmaps[o]
	nonEmpty uint64        // bit o set iff count[o] > 0
}

func newBuddyCore(top int) buddyCore {
	c := buddyCore{bitmaps: make([]buddyBitmap, top+1), count: make([]int64, top+1)}
	for o := range c.bitmaps {
		c.bitmaps[o] = newBuddyBitmap(int64(1) << (top - o))
	}
	c.insert(top, 0)
	return c
}

func (c *buddyCore) insert(o int, i int64) {
	c.bitmaps[o].set(i)
	c.count[o]++
	c.nonEmpty |= 1 << o
}

func (c *buddyCore) remove(o int, i int64) {
	c.bitmaps[o].clear(i)
	if c.count[o]--; c.count[o] == 0 {
		c.nonEmpty &^= 1 << o
	}
}

// alloc takes the lowest free block of the smallest order from o or more,
// splits it down to order o, frees the upper halves, and returns the slot of
// the lower one, aligned as a block of order from.
func (c *buddyCore) alloc(o, from int) (slot int64, ok bool) {
	m := c.nonEmpty >> from << from
	if m == 0 {
		return 0, false
	}
	k := bits.TrailingZeros64(m)
	i := c.bitmaps[k].first()
	c.remove(k, i)
	for ; k > o; k-- {
		i <<= 1
		c.insert(k-1, i|1)
	}
	return i << o, true
}

// free adds the block of order o at slot, merging it with its buddy for as
// long as the buddy is free.
func (c *buddyCore) free(slot int64, o int) {
	i := slot >> o
	for ; o < len(c.bitmaps)-1 && c.bitmaps[o].test(i^1); o++ {
		c.remove(o, i^1)
		i >>= 1
	}
	c.insert(o, i)
}

// largest returns the highest order with a free block, or -1.
func (c *buddyCore) largest() int {
	return bits.Len64(c.nonEmpty) - 1
}

// buddyBitmap is a bitmap with summary levels: levels[0] holds the bits, and
// bit j of levels[l+1] is set iff word j of levels[l] is not zero. The last
// level is one word.
type buddyBitmap struct {
	levels [][]uint64
}

func newBuddyBitmap(n int64) buddyBitmap {
	var m buddyBitmap
	for {
		words := (n + 63) / 64
		m.levels = append(m.levels, make([]uint64, words))
		if words == 1 {
			return m
		}
		n = words
	}
}

func (m *buddyBitmap) set(i int64) {
	for _, level := range m.levels {
		w := &level[i>>6]
		old := *w
		*w = old | 1<<(i&63)
		if old != 0 {
			return
		}
		i >>= 6
	}
}

func (m *buddyBitmap) clear(i int64) {
	for _, level := range m.levels {
		w := &level[i>>6]
		*w &^= 1 << (i & 63)
		if *w != 0 {
			return
		}
		i >>= 6
	}
}

func (m *buddyBitmap) test(i int64) bool {
	return m.levels[0][i>>6]&(1<<(i&63)) != 0
}

// first returns the lowest set bit; the bitmap must not be empty.
func (m *buddyBitmap) first() int64 {
	var i int64 // index into the current level
	for l := len(m.levels) - 1; l >= 0; l-- {
		i = i<<6 | int64(bits.TrailingZeros64(m.levels[l][i]))
	}
	return i
}

// runtime_procPin pins the goroutine to its P and returns the P's id;
// runtime_procUnpin undoes it. sync.Pool uses the same pair.
//
//go:linkname runtime_procPin runtime.procPin
func runtime_procPin() int

//go:linkname runtime_procUnpin runtime.procUnpin
func runtime_procUnpin()
