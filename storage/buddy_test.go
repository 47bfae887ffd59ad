package storage

import (
	"errors"
	"fmt"
	"math/bits"
	"reflect"
	"slices"
	"testing"
)

// counters sums the caches' counters without draining them, so a test can
// check Used after every step without changing what the caches hold.
func (b *Buddy) counters() (used, requested int64, allocs, frees uint64) {
	for i := range b.caches {
		c := &b.caches[i]
		c.mu.Lock()
		used += c.used
		requested += c.requested
		allocs += c.allocs
		frees += c.frees
		c.mu.Unlock()
	}
	return used, requested, allocs, frees
}

// verify checks the allocator's whole state against live, the blocks the
// test holds (offset to size): the free blocks in the core and in the caches
// and the live blocks tile the arena exactly, with no byte lost or counted
// twice; no two free buddies of the core are left unmerged; every block is
// aligned to its size; and the slot words mark exactly the live blocks.
func (b *Buddy) verify(live map[int64]int64) error {
	for i := range b.caches {
		b.caches[i].mu.Lock()
		defer b.caches[i].mu.Unlock()
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	slots := b.size >> b.minShift
	owner := make([]byte, slots) // 0 none, 1 core, 2 cache, 3 live
	mark := func(slot int64, o int, who byte) error {
		n := int64(1) << o
		if slot < 0 || slot+n > slots || slot&(n-1) != 0 {
			return fmt.Errorf("block of order %d at slot %d is misaligned or out of bounds", o, slot)
		}
		for s := slot; s < slot+n; s++ {
			if owner[s] != 0 {
				return fmt.Errorf("block of order %d at slot %d (owner %d) overlaps owner %d at slot %d", o, slot, who, owner[s], s)
			}
			owner[s] = who
		}
		return nil
	}
	for o := 0; o <= b.top; o++ {
		var count int64
		m := &b.core.bitmaps[o]
		for i := int64(0); i < int64(1)<<(b.top-o); i++ {
			if !m.test(i) {
				continue
			}
			count++
			if o < b.top && m.test(i^1) {
				return fmt.Errorf("free buddies %d and %d of order %d not merged", i, i^1, o)
			}
			if err := mark(i<<o, o, 1); err != nil {
				return err
			}
		}
		if count != b.core.count[o] || (count > 0) != (b.core.nonEmpty&(1<<o) != 0) {
			return fmt.Errorf("order %d: %d free blocks, count %d, nonEmpty %b", o, count, b.core.count[o], b.core.nonEmpty)
		}
		// The summary levels must agree with the bits.
		for l := 1; l < len(m.levels); l++ {
			for j, w := range m.levels[l-1] {
				if got := m.levels[l][j>>6]&(1<<(j&63)) != 0; got != (w != 0) {
					return fmt.Errorf("order %d: summary level %d bit %d is %v for word %#x", o, l, j, got, w)
				}
			}
		}
	}
	for i := range b.caches {
		c := &b.caches[i]
		var cached int64
		for o := 0; o <= b.top; o++ {
			if c.n[o] > b.cacheCap[o] {
				return fmt.Errorf("cache %d holds %d blocks of order %d, capacity %d", i, c.n[o], o, b.cacheCap[o])
			}
			for _, slot := range c.blocks[o][:c.n[o]] {
				if err := mark(int64(slot), o, 2); err != nil {
					return err
				}
				cached += b.minBlock << o
			}
		}
		if c.cached != cached || cached > b.cacheBudget {
			return fmt.Errorf("cache %d holds %d bytes, counts %d, budget %d", i, cached, c.cached, b.cacheBudget)
		}
	}
	starts := make(map[int64]int)
	for off, size := range live {
		o := bits.TrailingZeros64(uint64(size)) - int(b.minShift)
		if size != b.minBlock<<o {
			return fmt.Errorf("live block at %d has size %d, not a block size", off, size)
		}
		if err := mark(off>>b.minShift, o, 3); err != nil {
			return err
		}
		starts[off>>b.minShift] = o
	}
	for s, who := range owner {
		if who == 0 {
			return fmt.Errorf("slot %d is neither free nor live: lost", s)
		}
	}
	for s := range b.meta {
		w := b.meta[s].Load()
		o, isLive := starts[int64(s)]
		switch {
		case isLive && (w&metaInterior != 0 || int(w&metaOrderMask)-1 != o):
			return fmt.Errorf("slot %d starts a live block of order %d but its word is %#x", s, o, w)
		case !isLive && w != 0 && w&metaInterior == 0:
			return fmt.Errorf("slot %d starts no live block but its word is %#x", s, w)
		}
	}
	return nil
}

func mustBuddy(t testing.TB, o BuddyOptions, caches int) *Buddy {
	t.Helper()
	b, err := newBuddy(o, caches)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestBuddyOptions(t *testing.T) {
	for _, tc := range []struct {
		o              BuddyOptions
		size, minBlock int64
	}{
		{BuddyOptions{Size: 64}, 64, 64},
		{BuddyOptions{Size: 1000}, 1024, 64},
		{BuddyOptions{Size: 1025, MinBlock: 256}, 2048, 256},
		{BuddyOptions{Size: 1 << 20, MinBlock: 4096}, 1 << 20, 4096},
	} {
		b, err := NewBuddy(tc.o)
		if err != nil {
			t.Errorf("NewBuddy(%+v): %v", tc.o, err)
			continue
		}
		s := b.Stats()
		if s.Size != tc.size || s.MinBlock != tc.minBlock {
			t.Errorf("NewBuddy(%+v): size %d, min block %d; want %d, %d", tc.o, s.Size, s.MinBlock, tc.size, tc.minBlock)
		}
		if s.LargestFree != s.Size || s.Used != 0 || len(s.FreeBytesByOrder) != bits.Len64(uint64(s.Size/s.MinBlock)) {
			t.Errorf("NewBuddy(%+v): a new arena is not one free block: %+v", tc.o, s)
		}
	}
	for _, o := range []BuddyOptions{
		{Size: 1024, MinBlock: 32},         // below a cache line
		{Size: 1024, MinBlock: 96},         // not a power of two
		{Size: 1 << 30, MinBlock: 1 << 26}, // above 32 MiB
		{Size: 32, MinBlock: 0},            // smaller than MinBlock
		{Size: 0},
		{Size: -1},
		{Size: 64<<26 + 1, MinBlock: 64}, // too many slots
		{Size: 1 << 62},
	} {
		if _, err := NewBuddy(o); err == nil {
			t.Errorf("NewBuddy(%+v) succeeded", o)
		}
	}
}

func TestBuddySizes(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 1 << 20}, 1)
	live := map[int64]int64{}
	for _, tc := range []struct{ n, size int64 }{
		{1, 64}, {63, 64}, {64, 64}, {65, 128}, {128, 128}, {129, 256},
		{4095, 4096}, {4096, 4096}, {4097, 8192}, {100_000, 131072}, {1 << 18, 1 << 18},
	} {
		off, size, err := b.Allocate(tc.n)
		if err != nil {
			t.Fatalf("Allocate(%d): %v", tc.n, err)
		}
		if size != tc.size || off%size != 0 || off < 0 || off+size > 1<<20 {
			t.Errorf("Allocate(%d) = offset %d, size %d; want size %d, aligned to it, in bounds", tc.n, off, size, tc.size)
		}
		live[off] = size
	}
	if err := b.verify(live); err != nil {
		t.Fatal(err)
	}
	for off := range live {
		if err := b.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	// The whole arena, exactly.
	off, size, err := b.Allocate(1 << 20)
	if err != nil || off != 0 || size != 1<<20 {
		t.Fatalf("Allocate(whole arena) = %d, %d, %v", off, size, err)
	}
	if err := b.Free(0); err != nil {
		t.Fatal(err)
	}
}

func TestBuddyAllocateErrors(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 4096}, 1)
	for _, n := range []int64{0, -1, -1 << 62, 4097, 1 << 62} {
		if _, _, err := b.Allocate(n); !errors.Is(err, ErrInvalidSize) {
			t.Errorf("Allocate(%d): %v, want ErrInvalidSize", n, err)
		}
	}
	for _, align := range []int64{0, -64, 3, 96, 8192} {
		if _, _, err := b.AllocateAligned(64, align); !errors.Is(err, ErrInvalidSize) {
			t.Errorf("AllocateAligned(64, %d): %v, want ErrInvalidSize", align, err)
		}
	}
	if s := b.Stats(); s.Failures != 0 || s.Allocs != 0 {
		t.Fatalf("invalid requests counted: %+v", s)
	}
	if _, _, err := b.Allocate(2048); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.Allocate(2049); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("Allocate(2049) with 2048 free: %v, want ErrOutOfMemory", err)
	}
	if _, _, err := b.AllocateAligned(64, 4096); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("AllocateAligned(64, 4096) with the first half used: %v, want ErrOutOfMemory", err)
	}
	if s := b.Stats(); s.Failures != 2 || s.Allocs != 1 || s.Used != 2048 {
		t.Fatalf("after two failures: %+v", s)
	}
}

func TestBuddyAligned(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 1 << 16}, 1)
	live := map[int64]int64{}
	alloc := func(n, align int64) int64 {
		t.Helper()
		off, size, err := b.AllocateAligned(n, align)
		if err != nil {
			t.Fatalf("AllocateAligned(%d, %d): %v", n, align, err)
		}
		if off%align != 0 || off%size != 0 || size < n {
			t.Fatalf("AllocateAligned(%d, %d) = %d, %d", n, align, off, size)
		}
		live[off] = size
		return off
	}
	// Small blocks first, so the free blocks below 4096 are unaligned.
	for range 3 {
		alloc(64, 64)
	}
	for range 5 {
		if off := alloc(100, 4096); live[off] != 128 {
			t.Fatalf("a 100-byte block aligned to 4096 is %d bytes, want 128", live[off])
		}
	}
	alloc(5000, 4096) // a block of 8192 is aligned already
	alloc(64, 1<<15)
	if err := b.verify(live); err != nil {
		t.Fatal(err)
	}
	s := b.Stats()
	var used int64
	for _, size := range live {
		used += size
	}
	if s.Used != used {
		t.Fatalf("Used %d, want %d", s.Used, used)
	}
	for off := range live {
		if err := b.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	if s := b.Stats(); s.LargestFree != s.Size || s.Used != 0 {
		t.Fatalf("after freeing everything: %+v", s)
	}
}

// TestBuddyAlignedFromCache: an aligned request is served from a cached
// block that happens to be aligned, and falls back to the core when none is.
func TestBuddyAlignedFromCache(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 1 << 20}, 1)
	var offs []int64
	for range 16 {
		off, _, err := b.Allocate(64)
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	for _, off := range offs {
		if err := b.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	if b.caches[0].n[0] == 0 {
		t.Fatal("frees of 64-byte blocks were not cached")
	}
	off, _, err := b.AllocateAligned(64, 4096)
	if err != nil || off%4096 != 0 {
		t.Fatalf("AllocateAligned(64, 4096) = %d, %v", off, err)
	}
	if err := b.verify(map[int64]int64{off: 64}); err != nil {
		t.Fatal(err)
	}
}

func TestBuddyInvalidFree(t *testing.T) {
	// MinBlock 4096 keeps the metadata of this 256 MiB arena small; the
	// 192 MiB+ request needs the slack word of the next slot.
	b := mustBuddy(t, BuddyOptions{Size: 256 << 20, MinBlock: 4096}, 1)
	big, bigSize, err := b.Allocate(64<<20 + 1)
	if err != nil || bigSize != 128<<20 {
		t.Fatalf("Allocate(64 MiB + 1) = %d, %d, %v", big, bigSize, err)
	}
	small, _, err := b.Allocate(3 * 4096)
	if err != nil {
		t.Fatal(err)
	}
	freed, _, err := b.Allocate(4096)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Free(freed); err != nil {
		t.Fatal(err)
	}
	live := map[int64]int64{big: bigSize, small: 4 * 4096}
	before := b.Stats()
	if before.Requested != 64<<20+1+3*4096 {
		t.Fatalf("Requested %d, want %d", before.Requested, 64<<20+1+3*4096)
	}
	for name, off := range map[string]int64{
		"negative":              -4096,
		"at the end":            256 << 20,
		"beyond the end":        1 << 40,
		"misaligned":            small + 1,
		"inside a block":        small + 4096,
		"slack word of a block": big + 4096,
		"deep inside a block":   big + 64<<20,
		"double free":           freed,
		"never handed out":      200 << 20,
	} {
		err := b.Free(off)
		if !errors.Is(err, ErrInvalidFree) {
			t.Errorf("Free(%d), %s: %v, want ErrInvalidFree", off, name, err)
		}
		if err := b.verify(live); err != nil {
			t.Fatalf("after Free(%d), %s: %v", off, name, err)
		}
	}
	after := b.Stats()
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("invalid frees changed the stats:\n%+v\n%+v", before, after)
	}
	if err := b.Free(big); err != nil {
		t.Fatal(err)
	}
	if s := b.Stats(); s.Requested != 3*4096 || s.Used != 4*4096 {
		t.Fatalf("after freeing the big block: Used %d, Requested %d", s.Used, s.Requested)
	}
	if err := b.Free(big); !errors.Is(err, ErrInvalidFree) {
		t.Fatalf("second free of the big block: %v", err)
	}
}

// TestBuddyStats walks a hand-built scenario on a 1 KiB arena of 64-byte
// blocks, where the lowest-address-first policy fixes every offset.
func TestBuddyStats(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 1024}, 1)
	want := func(s BuddyStats, used, peak, requested, largest int64, free []int64) {
		t.Helper()
		var total int64
		for _, f := range free {
			total += f
		}
		frag := 0.0
		if total > 0 {
			frag = 1 - float64(largest)/float64(total)
		}
		if s.Used != used || s.Peak != peak || s.Requested != requested || s.LargestFree != largest ||
			!slices.Equal(s.FreeBytesByOrder, free) || s.Fragmentation != frag || s.Used+total != s.Size {
			t.Fatalf("stats %+v;\nwant used %d, peak %d, requested %d, largest free %d, free by order %v, fragmentation %g",
				s, used, peak, requested, largest, free, frag)
		}
	}
	alloc := func(n, wantOff int64) {
		t.Helper()
		if off, _, err := b.Allocate(n); err != nil || off != wantOff {
			t.Fatalf("Allocate(%d) = %d, %v; want offset %d", n, off, err, wantOff)
		}
	}
	want(b.Stats(), 0, 0, 0, 1024, []int64{0, 0, 0, 0, 1024})
	alloc(50, 0)    // splits 1024 down to 64: 64@64, 128@128, 256@256, 512@512 free
	alloc(100, 128) // 128@128
	alloc(200, 256) // 256@256
	want(b.Stats(), 448, 448, 350, 512, []int64{64, 0, 0, 512, 0})
	if err := b.Free(128); err != nil { // its buddy (0..127) is half used: no merge
		t.Fatal(err)
	}
	want(b.Stats(), 320, 448, 250, 512, []int64{64, 128, 0, 512, 0})
	if err := b.Free(0); err != nil { // merges with 64@64 and 128@128 into 256@0
		t.Fatal(err)
	}
	want(b.Stats(), 256, 448, 200, 512, []int64{0, 0, 256, 512, 0})
	alloc(512, 512)
	want(b.Stats(), 768, 768, 712, 256, []int64{0, 0, 256, 0, 0})
	if _, _, err := b.Allocate(257); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("Allocate(257) with 256 free: %v", err)
	}
	alloc(1, 0)
	if err := b.Free(256); err != nil {
		t.Fatal(err)
	}
	if err := b.Free(512); err != nil {
		t.Fatal(err)
	}
	want(b.Stats(), 64, 832, 1, 512, []int64{64, 128, 256, 512, 0})
	if err := b.Free(0); err != nil {
		t.Fatal(err)
	}
	s := b.Stats()
	want(s, 0, 832, 0, 1024, []int64{0, 0, 0, 0, 1024})
	if s.Allocs != 5 || s.Frees != 5 || s.Failures != 1 {
		t.Fatalf("counts %+v", s)
	}
}

// TestBuddyDrainsCaches: blocks freed into the caches of every P merge again
// when a request needs them.
func TestBuddyDrainsCaches(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 1 << 20}, 4)
	var offs []int64
	for {
		off, _, err := b.Allocate(64)
		if errors.Is(err, ErrOutOfMemory) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	if len(offs) != 1<<14 {
		t.Fatalf("%d blocks of 64 bytes in 1 MiB", len(offs))
	}
	// Spread the frees over the caches as if made on four Ps.
	for i, off := range offs {
		if err := b.free(off, &b.caches[i%4]); err != nil {
			t.Fatal(err)
		}
	}
	var cached int
	for i := range b.caches {
		cached += int(b.caches[i].n[0])
	}
	if cached == 0 {
		t.Fatal("no block was cached")
	}
	if err := b.verify(nil); err != nil {
		t.Fatal(err)
	}
	off, size, err := b.Allocate(1 << 20)
	if err != nil || off != 0 || size != 1<<20 {
		t.Fatalf("Allocate(whole arena) with free blocks in the caches: %d, %d, %v", off, size, err)
	}
}

// TestBuddyFreeOnOtherGoroutine: blocks freed by another goroutine than
// the one that allocated them are accounted once.
func TestBuddyFreeOnOtherGoroutine(t *testing.T) {
	b, err := NewBuddy(BuddyOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	offs := make(chan int64, 64)
	done := make(chan error)
	go func() {
		for off := range offs {
			if err := b.Free(off); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	for i := range 10_000 {
		off, _, err := b.Allocate(int64(1 + i%5000))
		if err != nil {
			t.Fatal(err)
		}
		offs <- off
	}
	close(offs)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	s := b.Stats()
	if s.Used != 0 || s.Requested != 0 || s.Allocs != 10_000 || s.Frees != 10_000 || s.LargestFree != s.Size {
		t.Fatalf("%+v", s)
	}
	if s.Peak < 8192 || s.Peak > s.Size {
		t.Fatalf("Peak %d out of range", s.Peak)
	}
}

// FuzzBuddy runs the fuzz input as a program against a 64 KiB arena of 64-byte
// blocks, three bytes an instruction: op, x, y. Op mod 8 is
//
//	0-2: Allocate((y+1) << (x%9))             1 byte to the whole arena
//	3:   AllocateAligned((y+1) << (x%9), 1 << (x>>4))
//	4-5: Free the live block x (mod their number)
//	6:   an invalid Free, of the kind x%6, near the live block y
//	7:   Stats, checked against the blocks the program holds
//
// After every instruction: every live block is in bounds and aligned to its
// size (and as asked), no two overlap, and Used and Requested are the sums
// over them; an invalid Free must fail with ErrInvalidFree and change nothing.
// Every 64 instructions, and after Stats, the allocator's whole state is
// verified (see verify). At the end everything is freed and must merge back
// into one block of the whole arena. Instructions past the 500th are ignored,
// so that every input runs in milliseconds.
func FuzzBuddy(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 8, 255, 4, 0, 0, 7, 0, 0})
	f.Add([]byte{3, 0xc3, 10, 3, 0x61, 0, 6, 3, 0, 6, 4, 0, 5, 1, 0, 7, 0, 0})
	const size, minBlock, maxSteps = 1 << 16, 64, 500
	f.Fuzz(func(t *testing.T, prog []byte) {
		b := mustBuddy(t, BuddyOptions{Size: size}, 1)
		live := map[int64]int64{}       // offset to block size
		requested := map[int64]int64{}  // offset to requested size
		var owner [size / minBlock]bool // slots of live blocks
		var order []int64               // live offsets, oldest first
		var freed []int64               // offsets freed and not handed out since
		var used, req int64             // sums over live
		prog = prog[:min(len(prog), 3*maxSteps)]
		for pc := 0; pc+3 <= len(prog); pc += 3 {
			step := pc / 3
			op, x, y := prog[pc]%8, prog[pc+1], prog[pc+2]
			switch op {
			case 0, 1, 2, 3:
				n := (int64(y) + 1) << (x % 9)
				var off, sz int64
				var err error
				align := int64(1)
				if op == 3 {
					align = int64(1) << (x >> 4)
					off, sz, err = b.AllocateAligned(n, align)
				} else {
					off, sz, err = b.Allocate(n)
				}
				if errors.Is(err, ErrOutOfMemory) {
					// It must really not fit: no free block of the size (or
					// of the alignment, for a smaller block) may exist.
					need := max(int64(minBlock)<<max(bits.Len64(uint64(n-1))-6, 0), align)
					if s := b.Stats(); s.LargestFree >= need {
						t.Fatalf("step %d: Allocate(%d, align %d): %v with a free block of %d", step, n, align, err, s.LargestFree)
					}
					break
				}
				if err != nil {
					t.Fatalf("step %d: Allocate(%d, align %d): %v", step, n, align, err)
				}
				if sz < n || sz >= 2*max(n, minBlock) || sz&(sz-1) != 0 || off%sz != 0 || off%align != 0 ||
					off < 0 || off+sz > size {
					t.Fatalf("step %d: Allocate(%d, align %d) = offset %d, size %d", step, n, align, off, sz)
				}
				for s := off / minBlock; s < (off+sz)/minBlock; s++ {
					if owner[s] {
						t.Fatalf("step %d: block [%d, %d) overlaps a live block at %d", step, off, off+sz, s*minBlock)
					}
					owner[s] = true
				}
				live[off], requested[off] = sz, n
				used, req = used+sz, req+n
				order = append(order, off)
				freed = slices.DeleteFunc(freed, func(o int64) bool { return o >= off && o < off+sz })
			case 4, 5:
				if len(order) == 0 {
					break
				}
				i := int(x) % len(order)
				off := order[i]
				if err := b.Free(off); err != nil {
					t.Fatalf("step %d: Free(%d): %v", step, off, err)
				}
				for s := off / minBlock; s < (off+live[off])/minBlock; s++ {
					owner[s] = false
				}
				used, req = used-live[off], req-requested[off]
				delete(live, off)
				delete(requested, off)
				order = slices.Delete(order, i, i+1)
				freed = append(freed, off)
			case 6:
				var near int64
				if len(order) > 0 {
					near = order[int(y)%len(order)]
				}
				var off int64
				switch x % 6 {
				case 0:
					off = -1 - int64(y)*minBlock
				case 1:
					off = size + int64(y)*minBlock
				case 2: // misaligned
					off = near + 1 + int64(y)%(minBlock-1)
				case 3: // inside a live block, or on a free one
					off = near + minBlock*(1+int64(y)%max(live[near]/minBlock-1, 1))
				case 4: // double free
					if len(freed) > 0 {
						off = freed[int(y)%len(freed)]
					}
				case 5: // a slot that may be free or inside a live block
					off = int64(y) * 256
				}
				if live[off] != 0 {
					break // a live block: not an invalid free
				}
				u0, r0, a0, f0 := b.counters()
				if err := b.Free(off); !errors.Is(err, ErrInvalidFree) {
					t.Fatalf("step %d: invalid Free(%d) (kind %d): %v, want ErrInvalidFree", step, off, x%6, err)
				}
				if u, r, a, fr := b.counters(); u != u0 || r != r0 || a != a0 || fr != f0 {
					t.Fatalf("step %d: invalid Free(%d) changed the counters", step, off)
				}
			case 7:
				s := b.Stats()
				var free int64
				for _, f := range s.FreeBytesByOrder {
					free += f
				}
				if s.Used+free != size || s.Peak < s.Used || s.Allocs-s.Frees != uint64(len(live)) {
					t.Fatalf("step %d: %+v with %d live blocks", step, s, len(live))
				}
			}
			if u, r, _, _ := b.counters(); u != used || r != req {
				t.Fatalf("step %d: Used %d, Requested %d; the live blocks hold %d, %d", step, u, r, used, req)
			}
			if op == 7 || step%64 == 63 {
				if err := b.verify(live); err != nil {
					t.Fatalf("step %d: %v", step, err)
				}
			}
		}
		if err := b.verify(live); err != nil {
			t.Fatal(err)
		}
		for _, off := range order {
			if err := b.Free(off); err != nil {
				t.Fatalf("final Free(%d): %v", off, err)
			}
		}
		s := b.Stats()
		if s.Used != 0 || s.Requested != 0 || s.LargestFree != size || s.Fragmentation != 0 ||
			s.FreeBytesByOrder[len(s.FreeBytesByOrder)-1] != size || s.Allocs != s.Frees {
			t.Fatalf("after freeing everything: %+v", s)
		}
		if err := b.verify(nil); err != nil {
			t.Fatal(err)
		}
	})
}

// TestBuddyCacheFollowsWorkload: a cache whose budget is spent on blocks of
// one size gives them back to the core when a block of another size is freed,
// rather than sending every block of the new size to the core.
func TestBuddyCacheFollowsWorkload(t *testing.T) {
	b := mustBuddy(t, BuddyOptions{Size: 1 << 20}, 1) // a cache budget of 64 KiB
	var offs []int64
	for range 16 {
		off, _, err := b.Allocate(4096)
		if err != nil {
			t.Fatal(err)
		}
		offs = append(offs, off)
	}
	for _, off := range offs {
		if err := b.Free(off); err != nil {
			t.Fatal(err)
		}
	}
	c := &b.caches[0]
	if c.cached != int64(c.n[6])*4096 || c.cached+32<<10 <= b.cacheBudget {
		t.Fatalf("after freeing 16 blocks of 4 KiB the cache holds %d bytes, %d blocks; want more than %d",
			c.cached, c.n[6], b.cacheBudget-32<<10)
	}
	off, _, err := b.Allocate(32 << 10)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Free(off); err != nil {
		t.Fatal(err)
	}
	if c.n[9] != 1 || c.n[6] != 0 || c.cached != 32<<10 {
		t.Fatalf("after freeing a block of 32 KiB the cache holds %d bytes: %d blocks of 32 KiB, %d of 4 KiB",
			c.cached, c.n[9], c.n[6])
	}
	if err := b.verify(nil); err != nil {
		t.Fatal(err)
	}
}
