package storage

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func page(block BlockKey, layer, size int) *Page {
	return &Page{Key: PageKey{Block: block, Layer: layer}, K: make([]byte, size/2), V: make([]byte, size-size/2)}
}

func TestChainKey(t *testing.T) {
	a := ChainKey(RootKey, []int32{1, 2, 3}, nil)
	if a != ChainKey(RootKey, []int32{1, 2, 3}, nil) {
		t.Fatal("ChainKey is not deterministic")
	}
	// Keys persisted by a tier must survive a restart and a new build: pin
	// one value so a change of hash or encoding is noticed.
	if got, want := a, BlockKey(0xa2728d319ab98d19); got != want {
		t.Fatalf("golden key changed: got %s want %s; persisted caches would go cold", got, want)
	}
	distinct := map[BlockKey]string{
		a: "base",
	}
	for name, k := range map[string]BlockKey{
		"other parent": ChainKey(a, []int32{1, 2, 3}, nil),
		"other tokens": ChainKey(RootKey, []int32{1, 2, 4}, nil),
		"token order":  ChainKey(RootKey, []int32{2, 1, 3}, nil),
		"extra key":    ChainKey(RootKey, []int32{1, 2, 3}, []uint64{7}),
		"other extra":  ChainKey(RootKey, []int32{1, 2, 3}, []uint64{8}),
		"shorter":      ChainKey(RootKey, []int32{1, 2}, nil),
	} {
		if prev, dup := distinct[k]; dup {
			t.Errorf("%s collides with %s", name, prev)
		}
		distinct[k] = name
	}
}

func TestHostTierLRU(t *testing.T) {
	var evicted []PageKey
	h, err := NewHostTier(HostOptions{MinBlock: 64, Capacity: 384, OnEvict: func(p *Page) { evicted = append(evicted, p.Key) }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := h.Put(page(BlockKey(i), 0, 128)); err != nil {
			t.Fatal(err)
		}
	}
	// Unpin 0, 1, 2 in that order: 0 is least recently used.
	for i := range 3 {
		if err := h.Unpin(PageKey{Block: BlockKey(i)}); err != nil {
			t.Fatal(err)
		}
	}
	// Touch 0 so 1 becomes the coldest.
	if _, ok := h.Pin(PageKey{Block: 0}); !ok {
		t.Fatal("page 0 missing")
	}
	if err := h.Unpin(PageKey{Block: 0}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Put(page(3, 0, 128)); err != nil {
		t.Fatal(err)
	}
	if len(evicted) != 1 || evicted[0].Block != 1 {
		t.Fatalf("evicted %v, want block 1", evicted)
	}
	if _, ok := h.Pin(PageKey{Block: 1}); ok {
		t.Fatal("evicted page still served")
	}
	s := h.Stats()
	if s.UsedBytes != 384 || s.Pages != 3 || s.Evictions != 1 || s.EvictedBytes != 128 || s.Hits != 1 || s.Misses != 1 {
		t.Fatalf("stats %+v", s)
	}
	if s.PinnedBytes != 128 { // page 3 is still pinned by its Put
		t.Fatalf("pinned bytes %d, want 128", s.PinnedBytes)
	}
}

func TestHostTierPinnedNeverEvicted(t *testing.T) {
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: 256})
	for i := range 2 {
		if _, err := h.Put(page(BlockKey(i), 0, 128)); err != nil {
			t.Fatal(err)
		}
	}
	_, err := h.Put(page(9, 0, 128))
	if !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put into a fully pinned tier: %v, want ErrNoSpace", err)
	}
	if s := h.Stats(); s.UsedBytes != 256 || s.Evictions != 0 {
		t.Fatalf("overcommitted or evicted a pinned page: %+v", s)
	}
	if _, err := h.Put(page(10, 0, 257)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized page: %v, want ErrTooLarge", err)
	}
}

// A Put that cannot succeed must not evict anything on its way to failing.
func TestHostTierFailedPutEvictsNothing(t *testing.T) {
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: 512})
	for i := range 4 {
		if _, err := h.Put(page(BlockKey(i), 0, 128)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 2 {
		if err := h.Unpin(PageKey{Block: BlockKey(i)}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := h.Put(page(9, 0, 384)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("Put of 384 bytes (a 512-byte block) with 256 pinned of 512: %v, want ErrNoSpace", err)
	}
	if s := h.Stats(); s.Evictions != 0 || s.Pages != 4 {
		t.Fatalf("a failed Put evicted: %+v", s)
	}
	if _, err := h.Put(page(9, 0, 256)); err != nil {
		t.Fatalf("Put of 256 bytes with 256 unpinned: %v", err)
	}
	if s := h.Stats(); s.Evictions != 2 || s.UsedBytes != 512 {
		t.Fatalf("after making room: %+v", s)
	}
}

func TestHostTierDedupAndUnpinErrors(t *testing.T) {
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: 1000})
	first := page(1, 2, 128)
	stored, err := h.Put(first)
	if err != nil {
		t.Fatal(err)
	}
	if stored == first || &stored.K[0] == &first.K[0] {
		t.Fatal("the tier stored the caller's buffers instead of copying them into its arena")
	}
	got, err := h.Put(page(1, 2, 128))
	if err != nil || got != stored {
		t.Fatalf("second Put of the same key returned %p, %v; want the stored page %p", got, err, stored)
	}
	if s := h.Stats(); s.UsedBytes != 128 || s.PagesWritten != 1 {
		t.Fatalf("duplicate stored twice: %+v", s)
	}
	for range 2 {
		if err := h.Unpin(first.Key); err != nil {
			t.Fatal(err)
		}
	}
	if err := h.Unpin(first.Key); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("third Unpin: %v, want ErrNotPinned", err)
	}
	if err := h.Unpin(PageKey{Block: 99}); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("Unpin of an absent page: %v, want ErrNotPinned", err)
	}
	if _, err := NewHostTier(HostOptions{}); err == nil {
		t.Fatal("zero capacity accepted")
	}
}

func TestManagerPrefixAndRelease(t *testing.T) {
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: 10_000})
	m, err := NewManager(ManagerOptions{Tier: h, Layers: 2})
	if err != nil {
		t.Fatal(err)
	}
	keys := []BlockKey{10, 11, 12, 13}
	w := m.NewLease()
	// Blocks 10 and 11 complete, 12 has only layer 0, 13 complete but after a gap.
	for _, pk := range []PageKey{{10, 0}, {10, 1}, {11, 0}, {11, 1}, {12, 0}, {13, 0}, {13, 1}} {
		if _, err := w.Commit(page(pk.Block, pk.Layer, 128)); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Release(); err != nil {
		t.Fatal(err)
	}
	r := m.NewLease()
	prefix, err := r.AcquirePrefix(keys)
	if err != nil {
		t.Fatal(err)
	}
	if len(prefix) != 2 {
		t.Fatalf("prefix of %d blocks, want 2 (block 12 lacks layer 1)", len(prefix))
	}
	for b, row := range prefix {
		for l, p := range row {
			if p.Key != (PageKey{keys[b], l}) {
				t.Fatalf("prefix[%d][%d] = %s", b, l, p.Key)
			}
		}
	}
	if r.Pins() != 4 || h.Stats().PinnedBytes != 512 {
		t.Fatalf("pins %d, pinned bytes %d; want 4 and 512 (nothing of block 12 pinned)", r.Pins(), h.Stats().PinnedBytes)
	}
	// The lookup looks before it pins: block 12 costs the tier nothing.
	if s := h.Stats(); s.Hits != 4 || s.Misses != 0 || s.BytesRead != 512 {
		t.Fatalf("hits %d misses %d read %d; want the 4 pages served, 512 bytes", s.Hits, s.Misses, s.BytesRead)
	}
	if s := m.ManagerStats(); s.MemoryPages != 4 || s.StorePages != 0 || s.MissedBlocks != 1 {
		t.Fatalf("manager stats %+v: want 4 pages from memory and the lookup stopped at one block", s)
	}
	if err := r.Release(); err != nil {
		t.Fatal(err)
	}
	if err := r.Release(); err != nil {
		t.Fatalf("second Release: %v", err)
	}
	if _, err := r.AcquirePrefix(keys); !errors.Is(err, ErrReleased) {
		t.Fatalf("use after release: %v", err)
	}
	if s := h.Stats(); s.PinnedBytes != 0 {
		t.Fatalf("pinned bytes after release: %d", s.PinnedBytes)
	}
}

// A released sequence's tail must be evicted before its head, which other
// requests are likelier to share.
func TestReleaseEvictsTailFirst(t *testing.T) {
	var evicted []BlockKey
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: 384, OnEvict: func(p *Page) { evicted = append(evicted, p.Key.Block) }})
	m, _ := NewManager(ManagerOptions{Tier: h, Layers: 1})
	l := m.NewLease()
	for b := range 3 {
		if _, err := l.Commit(page(BlockKey(b), 0, 128)); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if _, err := m.NewLease().Commit(page(7, 0, 128)); err != nil {
		t.Fatal(err)
	}
	if len(evicted) != 1 || evicted[0] != 2 {
		t.Fatalf("evicted %v, want the tail block 2", evicted)
	}
}

// Many goroutines commit, acquire and release; at the end the tier never
// exceeded its capacity, every pin was returned, and the byte count matches
// the pages present.
func TestHostTierConcurrent(t *testing.T) {
	const capacity = 64 * 100
	var mu sync.Mutex
	evictedBytes := int64(0)
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: capacity, OnEvict: func(p *Page) {
		mu.Lock()
		evictedBytes += p.Size()
		mu.Unlock()
	}})
	m, _ := NewManager(ManagerOptions{Tier: h, Layers: 2})
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 2000 {
				l := m.NewLease()
				n := 1 + rng.IntN(6)
				keys := make([]BlockKey, n)
				for i := range keys {
					keys[i] = BlockKey(rng.IntN(40))
				}
				prefix, err := l.AcquirePrefix(keys)
				if err != nil {
					errs <- err
					return
				}
				for b := len(prefix); b < n; b++ {
					for layer := range 2 {
						if _, err := l.Commit(page(keys[b], layer, 64)); err != nil && !errors.Is(err, ErrNoSpace) {
							errs <- err
							return
						}
					}
				}
				if s := h.Stats(); s.UsedBytes > capacity {
					errs <- fmt.Errorf("used %d > capacity %d", s.UsedBytes, capacity)
					return
				}
				if err := l.Release(); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s := h.Stats()
	if s.PinnedBytes != 0 {
		t.Fatalf("pins leaked: %d bytes pinned", s.PinnedBytes)
	}
	if s.UsedBytes != s.Pages*64 || s.UsedBytes > capacity {
		t.Fatalf("used %d bytes for %d pages (capacity %d)", s.UsedBytes, s.Pages, capacity)
	}
	if int64(s.BytesWritten)-int64(s.EvictedBytes) != s.UsedBytes || int64(s.EvictedBytes) != evictedBytes {
		t.Fatalf("bytes lost: written %d evicted %d (callback %d) used %d", s.BytesWritten, s.EvictedBytes, evictedBytes, s.UsedBytes)
	}
}

// A page whose buddy block exceeds the capacity is too large, even when its
// own size is not.
func TestHostTierBlockTooLarge(t *testing.T) {
	h, _ := NewHostTier(HostOptions{MinBlock: 64, Capacity: 384})
	if _, err := h.Put(page(1, 0, 300)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("a 300-byte page (512-byte block) in a 384-byte tier: %v, want ErrTooLarge", err)
	}
	if s := h.Stats(); s.Evictions != 0 || s.Pages != 0 {
		t.Fatalf("stats %+v", s)
	}
}
