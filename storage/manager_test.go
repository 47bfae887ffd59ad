package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
)

// memStore is a Store in a map, for testing the manager apart from Badger:
// unbounded, with pins and an injectable checksum failure.
type memStore struct {
	mu      sync.Mutex
	pages   map[PageKey][]byte // K then V, guarded by mu
	pins    map[PageKey]int    // guarded by mu
	corrupt map[PageKey]bool   // read fails with ErrChecksum once; guarded by mu
	reads   atomic.Int64
	writes  atomic.Int64
	tries   atomic.Int64 // Writes called
	failAll error        // every Write fails with it
}

func newMemStore() *memStore {
	return &memStore{pages: map[PageKey][]byte{}, pins: map[PageKey]int{}, corrupt: map[PageKey]bool{}}
}

func (s *memStore) Name() string { return "mem" }
func (s *memStore) Write(p *Page) error {
	s.tries.Add(1)
	if s.failAll != nil {
		return s.failAll
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pages[p.Key]; !ok {
		s.pages[p.Key] = append(append([]byte(nil), p.K...), p.V...)
		s.writes.Add(1)
	}
	return nil
}
func (s *memStore) Contains(k PageKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.pages[k]
	return ok
}
func (s *memStore) Pin(k PageKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.pages[k]; !ok {
		return false
	}
	s.pins[k]++
	return true
}
func (s *memStore) Unpin(k PageKey) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pins[k] == 0 {
		return ErrNotPinned
	}
	s.pins[k]--
	return nil
}
func (s *memStore) Read(k PageKey, _ []byte) (*Page, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.pages[k]
	if !ok {
		return nil, ErrNotFound
	}
	if s.corrupt[k] {
		delete(s.corrupt, k)
		delete(s.pages, k)
		return nil, ErrChecksum
	}
	s.reads.Add(1)
	c := append([]byte(nil), b...)
	return &Page{Key: k, K: c[:len(c)/2], V: c[len(c)/2:]}, nil
}
func (s *memStore) Stats() TierStats { return TierStats{Name: "mem"} }
func (s *memStore) Close() error     { return nil }
func (s *memStore) pinned() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.pins {
		n += c
	}
	return n
}

// tieredManager returns a manager over a host tier of hostPages pages of 128
// bytes and a memStore, with evictions wired to Demote.
func tieredManager(t *testing.T, hostPages int, w WritePolicy) (*Manager, *HostTier, *memStore) {
	t.Helper()
	var m *Manager
	h, err := NewHostTier(HostOptions{Capacity: int64(hostPages) * 128, MinBlock: 128, OnEvict: func(p *Page) { m.Demote(p) }})
	if err != nil {
		t.Fatal(err)
	}
	st := newMemStore()
	m, err = NewManager(ManagerOptions{Tier: h, Store: st, Write: w, Layers: 2})
	if err != nil {
		t.Fatal(err)
	}
	return m, h, st
}

// kvPage returns a 128-byte page whose bytes derive from its key.
func kvPage(b BlockKey, layer int) *Page {
	buf := make([]byte, 128)
	x := uint64(b)*0x9e3779b97f4a7c15 ^ uint64(layer+1)
	for i := range buf {
		x = x*6364136223846793005 + 1442695040888963407
		buf[i] = byte(x >> 56)
	}
	return &Page{Key: PageKey{Block: b, Layer: layer}, K: buf[:64], V: buf[64:]}
}

// commitBlocks commits both layers of each block under a lease of its own,
// released at once, as a request that computed the block would.
func commitBlocks(t *testing.T, m *Manager, blocks ...BlockKey) {
	t.Helper()
	for _, b := range blocks {
		l := m.NewLease()
		for layer := range 2 {
			if _, err := l.Commit(kvPage(b, layer)); err != nil {
				t.Fatal(err)
			}
		}
		if err := l.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestManagerWriteBackDemotesAndFindsPrefixInBothTiers(t *testing.T) {
	m, h, st := tieredManager(t, 4, WriteBack)
	commitBlocks(t, m, 1, 2)
	if st.writes.Load() != 0 {
		t.Fatalf("write_back wrote %d pages before any eviction", st.writes.Load())
	}
	commitBlocks(t, m, 3, 4) // evicts blocks 1 and 2 from host: they go down
	if got := m.ManagerStats().Demoted; got != 4 || st.writes.Load() != 4 {
		t.Fatalf("demoted %d, store writes %d; want 4 and 4", got, st.writes.Load())
	}
	l := m.NewLease()
	prefix, err := l.AcquirePrefix([]BlockKey{1, 2, 3, 4, 5})
	if err != nil {
		t.Fatal(err)
	}
	if len(prefix) != 4 {
		t.Fatalf("prefix of %d blocks, want 4 (block 5 was never cached)", len(prefix))
	}
	for b, row := range prefix {
		for _, s := range row {
			inMem := s.Page != nil
			if want := b >= 2; inMem != want {
				t.Fatalf("block %d layer %d: in memory %v, want %v", b+1, s.Key.Layer, inMem, want)
			}
		}
	}
	if st.pinned() != 4 || h.Stats().PinnedBytes != 4*128 {
		t.Fatalf("store pins %d, host pinned bytes %d; want 4 pins each side", st.pinned(), h.Stats().PinnedBytes)
	}
	if s := m.ManagerStats(); s.MemoryPages != 4 || s.StorePages != 4 || s.MissedBlocks != 1 {
		t.Fatalf("lookup stats %+v", s)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if st.pinned() != 0 || h.Stats().PinnedBytes != 0 {
		t.Fatal("pins left after release")
	}
}

func TestManagerWriteThrough(t *testing.T) {
	m, _, st := tieredManager(t, 4, WriteThrough)
	commitBlocks(t, m, 1)
	if st.writes.Load() != 2 {
		t.Fatalf("write_through stored %d pages, want 2 at commit", st.writes.Load())
	}
	commitBlocks(t, m, 2, 3) // evicts block 1: already below, no second write
	if st.writes.Load() != 6 || m.ManagerStats().Demoted != 0 {
		t.Fatalf("store writes %d, demoted %d; want 6 and 0", st.writes.Load(), m.ManagerStats().Demoted)
	}
}

func TestManagerPromoteAndClaim(t *testing.T) {
	m, h, st := tieredManager(t, 4, WriteBack)
	commitBlocks(t, m, 1, 2, 3) // block 1 down
	l := m.NewLease()
	prefix, err := l.AcquirePrefix([]BlockKey{1})
	if err != nil || len(prefix) != 1 || prefix[0][0].Page != nil {
		t.Fatalf("prefix %v, %v: want block 1 in the store", prefix, err)
	}
	key := prefix[0][0].Key
	p, err := m.Promote(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(p.K, kvPage(1, 0).K) {
		t.Fatal("promoted page has other bytes")
	}
	if !h.Contains(key) {
		t.Fatal("promoted page is not in the host tier")
	}
	got, ok, err := l.PinResident(key)
	if err != nil || !ok || !bytes.Equal(got.V, kvPage(1, 0).V) {
		t.Fatalf("PinResident: %v %v", ok, err)
	}
	// Promote the other layer, then push it out before anyone uses it.
	if _, err := m.Promote(context.Background(), prefix[0][1].Key); err != nil {
		t.Fatal(err)
	}
	commitBlocks(t, m, 4, 5)
	if s := m.ManagerStats(); s.Promoted != 2 || s.Wasted != 1 {
		t.Fatalf("stats %+v: want 2 promoted, 1 wasted", s)
	}
	if err := l.Release(); err != nil {
		t.Fatal(err)
	}
	if st.reads.Load() != 2 {
		t.Fatalf("store reads %d, want 2", st.reads.Load())
	}
	if _, err := m.Promote(context.Background(), PageKey{Block: 99}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("promote of a page in no tier: %v", err)
	}
}

func TestManagerChecksumFailureComesBack(t *testing.T) {
	m, _, st := tieredManager(t, 4, WriteThrough)
	commitBlocks(t, m, 1, 2, 3)
	key := PageKey{Block: 1}
	st.mu.Lock()
	st.corrupt[key] = true
	st.mu.Unlock()
	if _, err := m.Promote(context.Background(), key); !errors.Is(err, ErrChecksum) {
		t.Fatalf("promote of a corrupt page: %v, want ErrChecksum", err)
	}
}

func TestManagerCommitWithoutRoomGoesDown(t *testing.T) {
	m, _, st := tieredManager(t, 2, WriteBack)
	hold := m.NewLease()
	for layer := range 2 {
		if _, err := hold.Commit(kvPage(1, layer)); err != nil {
			t.Fatal(err)
		}
	}
	// Host full of pinned pages: the new page cannot stay in memory, but it
	// reaches the store, so the cache still has it.
	l := m.NewLease()
	if _, err := l.Commit(kvPage(2, 0)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("commit into a full host: %v, want ErrNoSpace", err)
	}
	if !st.Contains(PageKey{Block: 2}) {
		t.Fatal("the page that found no room in memory is not in the store")
	}
	st.failAll = errors.New("disk full")
	if _, err := l.Commit(kvPage(3, 0)); err == nil || errors.Is(err, ErrNoSpace) {
		t.Fatalf("commit with a failing store: %v, want the store's error", err)
	}
	for _, x := range []*Lease{hold, l} {
		if err := x.Release(); err != nil {
			t.Fatal(err)
		}
	}
}

func TestManagerDemoteFailureIsCounted(t *testing.T) {
	m, _, st := tieredManager(t, 2, WriteBack)
	st.failAll = errors.New("disk full")
	commitBlocks(t, m, 1, 2) // evicts block 1; its demotion fails
	if s := m.ManagerStats(); s.DemoteErrors != 2 || s.Demoted != 0 {
		t.Fatalf("stats %+v: want 2 failed demotions", s)
	}
}

// TestManagerStress runs leases that look up, promote, commit and release
// over a small host tier and a store, concurrently under -race, and checks
// that every page handed out has its key's bytes and no pin is left: over
// the in-memory store, and over a real SSD tier small enough to evict too.
func TestManagerStress(t *testing.T) {
	t.Run("memstore", func(t *testing.T) {
		m, h, st := tieredManager(t, 16, WriteBack)
		stressManager(t, m)
		if st.pinned() != 0 || h.Stats().PinnedBytes != 0 {
			t.Fatalf("pins left: store %d, host %d bytes", st.pinned(), h.Stats().PinnedBytes)
		}
	})
	t.Run("ssd", func(t *testing.T) {
		for _, w := range []WritePolicy{WriteBack, WriteThrough} {
			ssd, err := OpenSSDTier(SSDOptions{Dir: t.TempDir(), Capacity: 12 * 128, GCInterval: -1})
			if err != nil {
				t.Fatal(err)
			}
			var m *Manager
			h, err := NewHostTier(HostOptions{Capacity: 16 * 128, MinBlock: 128, OnEvict: func(p *Page) { m.Demote(p) }})
			if err != nil {
				t.Fatal(err)
			}
			m, err = NewManager(ManagerOptions{Tier: h, Store: ssd, Write: w, Layers: 2})
			if err != nil {
				t.Fatal(err)
			}
			stressManager(t, m)
			if s := ssd.Stats(); s.PinnedBytes != 0 || s.UsedBytes > s.CapacityBytes || s.ChecksumFailures != 0 {
				t.Fatalf("%v: ssd tier after the stress: %+v", w, s)
			}
			if h.Stats().PinnedBytes != 0 {
				t.Fatalf("%v: host pins left", w)
			}
			if err := ssd.Close(); err != nil {
				t.Fatal(err)
			}
		}
	})
}

func stressManager(t *testing.T, m *Manager) {
	t.Helper()
	h := m.mem
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			for range 300 {
				l := m.NewLease()
				keys := make([]BlockKey, 1+r.IntN(4))
				for i := range keys {
					keys[i] = BlockKey(1 + r.IntN(12))
				}
				prefix, err := l.AcquirePrefix(keys)
				if err != nil {
					t.Error(err)
					return
				}
				for _, row := range prefix {
					for _, s := range row {
						p := s.Page
						if p == nil {
							if p, err = m.Promote(context.Background(), s.Key); err != nil {
								t.Errorf("promote %s: %v", s.Key, err)
								continue
							}
							if rp, ok, err := l.PinResident(s.Key); err != nil {
								t.Error(err)
							} else if ok {
								p = rp
							}
						}
						if want := kvPage(s.Key.Block, s.Key.Layer); !bytes.Equal(p.K, want.K) || !bytes.Equal(p.V, want.V) {
							t.Errorf("page %s has another page's bytes", s.Key)
						}
					}
				}
				for _, k := range keys[len(prefix):] {
					for layer := range 2 {
						if _, err := l.Commit(kvPage(k, layer)); err != nil && !errors.Is(err, ErrNoSpace) {
							t.Errorf("commit: %v", err)
						}
					}
				}
				if err := l.Release(); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	if s := h.Stats(); s.UsedBytes > s.CapacityBytes {
		t.Fatalf("host uses %d of %d bytes", s.UsedBytes, s.CapacityBytes)
	}
	if s := m.ManagerStats(); s.Promoted+s.PrivateLoads == 0 || s.StorePages == 0 {
		t.Fatalf("stats %+v: the stress never loaded from the store", s)
	}
}

// A store with no room takes none of Flush's pages, and Flush goes on
// (pinned pages may leave); one whose disk is nearly full stops it at the
// first page. Neither is an error: the pages stay in the memory tier.
func TestManagerFlushNoRoom(t *testing.T) {
	for _, c := range []struct {
		err   error
		tries int64
	}{{ErrNoSpace, 4}, {fmt.Errorf("disk: %w (%w)", ErrDiskFull, ErrNoSpace), 1}} {
		m, _, st := tieredManager(t, 4, WriteBack)
		commitBlocks(t, m, 1, 2)
		st.failAll = c.err
		n, err := m.Flush()
		if n != 0 || err != nil || st.tries.Load() != c.tries {
			t.Errorf("store failing with %v: Flush wrote %d, %v, after %d tries; want 0, nil, %d", c.err, n, err, st.tries.Load(), c.tries)
		}
	}
}

func TestManagerFlushWritesBack(t *testing.T) {
	m, _, st := tieredManager(t, 4, WriteBack)
	commitBlocks(t, m, 1, 2)
	if st.writes.Load() != 0 {
		t.Fatal("write_back wrote before eviction")
	}
	n, err := m.Flush()
	if err != nil || n != 4 || st.writes.Load() != 4 {
		t.Fatalf("Flush wrote %d pages (store %d), %v; want the host's 4", n, st.writes.Load(), err)
	}
	if n, _ := m.Flush(); n != 0 {
		t.Fatalf("second Flush wrote %d pages", n)
	}
}
