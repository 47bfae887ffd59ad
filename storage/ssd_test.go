package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dgraph-io/badger/v4"
)

// ssdMix64 is one step of the SplitMix64 generator, used to derive page
// bytes from a key so that any read can be checked.
func ssdMix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// ssdPageFor returns the page of key with size bytes, K the first half: its
// bytes are a function of the key and the offset.
func ssdPageFor(key PageKey, size int) *Page {
	b := make([]byte, size)
	seed := ssdMix64(uint64(key.Block) ^ uint64(key.Layer)<<48)
	var w [8]byte
	for off := 0; off < size; off += 8 {
		binary.LittleEndian.PutUint64(w[:], ssdMix64(seed+uint64(off)))
		copy(b[off:], w[:])
	}
	return &Page{Key: key, K: b[: size/2 : size/2], V: b[size/2:]}
}

// checkSSDPage fails unless p is key's page of size bytes.
func checkSSDPage(t testing.TB, p *Page, key PageKey, size int) {
	t.Helper()
	want := ssdPageFor(key, size)
	if p.Key != key || !bytes.Equal(p.K, want.K) || !bytes.Equal(p.V, want.V) {
		t.Fatalf("page %s read back as %s with %d+%d bytes, not the %d+%d written (or other bytes)",
			key, p.Key, len(p.K), len(p.V), len(want.K), len(want.V))
	}
}

func openSSD(t testing.TB, dir string, capacity int64) *SSDTier {
	t.Helper()
	// No free-space check: these tests hold no matter how full the
	// test's disk is (TestSSDDiskFull checks it).
	s, err := OpenSSDTier(SSDOptions{Dir: dir, Capacity: capacity, Namespace: "test", MinFree: -1})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkSSDInvariants(t testing.TB, s *SSDTier) {
	t.Helper()
	if err := s.checkInvariants(); err != nil {
		t.Fatal(err)
	}
}

func sk(block, layer int) PageKey { return PageKey{Block: BlockKey(block), Layer: layer} }

func TestSSDRoundTrip(t *testing.T) {
	s := openSSD(t, t.TempDir(), 64<<20)
	defer s.Close()
	// Inline in Badger's tree (under 1 KiB with the header), in the value
	// log, around varint boundaries of Badger's entry header, and large.
	sizes := []int{0, 1, 1000, 1007, 1008, 4096, 16367, 16368, 64<<10 + 3, 256 << 10, 2 << 20, 2<<20 + 1}
	var total uint64
	for i, size := range sizes {
		key := sk(1000+i, i%3)
		if err := s.Write(ssdPageFor(key, size)); err != nil {
			t.Fatalf("write %d bytes: %v", size, err)
		}
		total += uint64(size)
	}
	for i, size := range sizes {
		key := sk(1000+i, i%3)
		p, err := s.Read(key, nil)
		if err != nil {
			t.Fatalf("read %d bytes: %v", size, err)
		}
		checkSSDPage(t, p, key, size)
		// A large enough buf holds the page's bytes.
		buf := make([]byte, size+10)
		p, err = s.Read(key, buf)
		if err != nil {
			t.Fatal(err)
		}
		checkSSDPage(t, p, key, size)
		if size > 1 && (&p.K[0] != &buf[0] || &p.V[0] != &buf[size/2]) {
			t.Fatalf("page of %d bytes not read into the buffer given", size)
		}
		// A small one is not used.
		small := make([]byte, size/2)
		p, err = s.Read(key, small)
		if err != nil {
			t.Fatal(err)
		}
		checkSSDPage(t, p, key, size)
	}
	if _, err := s.Read(sk(1, 0), nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of an absent page: %v, want ErrNotFound", err)
	}
	// Contains and Pin count neither hits nor misses.
	if s.Contains(sk(1, 0)) || !s.Contains(sk(1000, 0)) || s.Pin(sk(1, 0)) {
		t.Fatal("Contains or Pin wrong")
	}
	st := s.Stats()
	n := uint64(len(sizes))
	if st.Name != "ssd" || st.Hits != 3*n || st.Misses != 1 || st.BytesRead != 3*total ||
		st.BytesWritten != total || st.PagesWritten != n || st.Pages != int64(n) ||
		st.UsedBytes != int64(total) || st.PeakBytes != int64(total) || st.CapacityBytes != 64<<20 {
		t.Fatalf("stats %+v", st)
	}
	if st.DiskBytes < int64(total) {
		t.Fatalf("disk bytes %d, less than the %d bytes of pages", st.DiskBytes, total)
	}
	// Writing a stored key again writes nothing.
	if err := s.Write(ssdPageFor(sk(1000, 0), 10)); err != nil {
		t.Fatal(err)
	}
	if st2 := s.Stats(); st2.PagesWritten != n || st2.BytesWritten != total {
		t.Fatalf("rewrite of a stored page wrote: %+v", st2)
	}
	p, err := s.Read(sk(1000, 0), nil)
	if err != nil || p.Size() != 0 {
		t.Fatalf("page changed by a second write: %v, %d bytes", err, p.Size())
	}
	checkSSDInvariants(t, s)
}

func TestSSDBadInput(t *testing.T) {
	s := openSSD(t, t.TempDir(), 1<<20)
	defer s.Close()
	if err := s.Write(nil); err == nil {
		t.Fatal("nil page written")
	}
	// A layer past int32 (where an int can hold one).
	if big := int64(math.MaxInt32) + 1; int64(int(big)) == big {
		if err := s.Write(&Page{Key: PageKey{Layer: int(big)}}); err == nil {
			t.Fatal("page of an out-of-range layer written")
		}
	}
	// Negative layers round-trip.
	key := PageKey{Block: ^BlockKey(0), Layer: -7}
	if err := s.Write(ssdPageFor(key, 2000)); err != nil {
		t.Fatal(err)
	}
	p, err := s.Read(key, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkSSDPage(t, p, key, 2000)
	if err := s.Unpin(key); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("unpin of an unpinned page: %v", err)
	}
	if err := s.Unpin(sk(5, 5)); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("unpin of an absent page: %v", err)
	}
	if _, err := OpenSSDTier(SSDOptions{Dir: t.TempDir()}); err == nil {
		t.Fatal("tier of no capacity opened")
	}
	if _, err := OpenSSDTier(SSDOptions{Capacity: 1}); err == nil {
		t.Fatal("tier of no directory opened")
	}
}

func TestSSDTooLarge(t *testing.T) {
	s := openSSD(t, t.TempDir(), 100)
	defer s.Close()
	if err := s.Write(ssdPageFor(sk(1, 0), 4096)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("page over the capacity: %v, want ErrTooLarge", err)
	}
	if err := s.Write(ssdPageFor(sk(1, 0), 100)); err != nil {
		t.Fatalf("page of the capacity: %v", err)
	}
	// Larger than a value-log file (16 MiB here) though within capacity.
	big := openSSD(t, t.TempDir(), 40<<20)
	defer big.Close()
	if err := big.Write(&Page{Key: sk(1, 0), K: make([]byte, 17<<20)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("page over a value-log file: %v, want ErrTooLarge", err)
	}
	if st := big.Stats(); st.UsedBytes != 0 || st.WriteErrors != 0 {
		t.Fatalf("refused page counted: %+v", st)
	}
}

func TestSSDEvictionLRU(t *testing.T) {
	const size = 4096
	s := openSSD(t, t.TempDir(), 4*size+size/2)
	defer s.Close()
	for i := range 4 {
		if err := s.Write(ssdPageFor(sk(i, 0), size)); err != nil {
			t.Fatal(err)
		}
	}
	// Read 0 and rewrite 1: 2 is now the coldest, then 3.
	if _, err := s.Read(sk(0, 0), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ssdPageFor(sk(1, 0), size)); err != nil {
		t.Fatal(err)
	}
	if got, want := s.lruKeys(), []PageKey{sk(2, 0), sk(3, 0), sk(0, 0), sk(1, 0)}; !slices.Equal(got, want) {
		t.Fatalf("LRU order %v, want %v", got, want)
	}
	if err := s.Write(ssdPageFor(sk(4, 0), size)); err != nil {
		t.Fatal(err)
	}
	if s.Contains(sk(2, 0)) || !s.Contains(sk(3, 0)) {
		t.Fatal("evicted other than the coldest page")
	}
	if _, err := s.Read(sk(2, 0), nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of an evicted page: %v", err)
	}
	if v, err := s.rawValue(sk(2, 0)); !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("evicted page still in Badger (%d bytes, %v)", len(v), err)
	}
	// A page of two slots evicts the two coldest.
	if err := s.Write(ssdPageFor(sk(5, 0), 2*size)); err != nil {
		t.Fatal(err)
	}
	if got, want := s.lruKeys(), []PageKey{sk(1, 0), sk(4, 0), sk(5, 0)}; !slices.Equal(got, want) {
		t.Fatalf("after a double page, LRU order %v, want %v", got, want)
	}
	st := s.Stats()
	if st.Evictions != 3 || st.EvictedBytes != 3*size || st.UsedBytes != 4*size || st.Pages != 3 || st.PeakBytes != 4*size {
		t.Fatalf("stats %+v", st)
	}
	checkSSDInvariants(t, s)
}

func TestSSDPinned(t *testing.T) {
	const size = 4096
	s := openSSD(t, t.TempDir(), 3*size)
	defer s.Close()
	for i := range 3 {
		if err := s.Write(ssdPageFor(sk(i, 0), size)); err != nil {
			t.Fatal(err)
		}
		if !s.Pin(sk(i, 0)) {
			t.Fatal("pin of a stored page failed")
		}
	}
	if !s.Pin(sk(0, 0)) {
		t.Fatal("second pin failed")
	}
	if err := s.Write(ssdPageFor(sk(3, 0), size)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write with every page pinned: %v, want ErrNoSpace", err)
	}
	st := s.Stats()
	if st.Evictions != 0 || st.Pages != 3 || st.PinnedBytes != 3*size || st.WriteErrors != 0 {
		t.Fatalf("after ErrNoSpace: %+v", st)
	}
	// Unpinning 0 once leaves it pinned; unpinning 1 makes it the victim.
	if err := s.Unpin(sk(0, 0)); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(sk(1, 0)); err != nil {
		t.Fatal(err)
	}
	// A read of a pinned page does not make it evictable.
	if _, err := s.Read(sk(2, 0), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Write(ssdPageFor(sk(3, 0), size)); err != nil {
		t.Fatal(err)
	}
	if s.Contains(sk(1, 0)) || !s.Contains(sk(0, 0)) || !s.Contains(sk(2, 0)) {
		t.Fatal("evicted a pinned page, or not the unpinned one")
	}
	// Two pages' room with one evictable page: refused, and nothing lost.
	if err := s.Write(ssdPageFor(sk(4, 0), 2*size)); !errors.Is(err, ErrNoSpace) {
		t.Fatalf("write over the unpinned room: %v, want ErrNoSpace", err)
	}
	if !s.Contains(sk(3, 0)) {
		t.Fatal("a refused write evicted a page")
	}
	if st := s.Stats(); st.UsedBytes > st.CapacityBytes || st.PinnedBytes != 2*size {
		t.Fatalf("stats %+v", st)
	}
	for _, k := range []PageKey{sk(0, 0), sk(2, 0)} {
		if err := s.Unpin(k); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Unpin(sk(0, 0)); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("unpin past the pins: %v", err)
	}
	if st := s.Stats(); st.PinnedBytes != 0 {
		t.Fatalf("pinned bytes %d after the last unpin", st.PinnedBytes)
	}
	checkSSDInvariants(t, s)
}

func TestSSDRestore(t *testing.T) {
	dir := t.TempDir()
	// Sizes across the value log's varint boundaries: the restored sizes
	// are derived from Badger's approximate value sizes.
	sizes := []int{100, 1007, 1008, 5000, 16367, 16368, 16369, 300 << 10, 2<<20 - 17, 2<<20 - 16, 2 << 20}
	s := openSSD(t, dir, 64<<20)
	var total int64
	for i, size := range sizes {
		if err := s.Write(ssdPageFor(sk(i, 1), size)); err != nil {
			t.Fatal(err)
		}
		total += int64(size)
	}
	// Reads do not survive a restart; the order of the writes does.
	if _, err := s.Read(sk(0, 1), nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openSSD(t, dir, 64<<20)
	st := s.Stats()
	if st.RestoredPages != int64(len(sizes)) || st.Pages != int64(len(sizes)) || st.UsedBytes != total || st.PagesWritten != 0 {
		t.Fatalf("restored %+v; want %d pages of %d bytes", st, len(sizes), total)
	}
	var order []PageKey
	for i, size := range sizes {
		p, err := s.Read(sk(i, 1), nil)
		if err != nil {
			t.Fatalf("restored page of %d bytes: %v", size, err)
		}
		checkSSDPage(t, p, sk(i, 1), size)
		order = append(order, sk(i, 1))
	}
	checkSSDInvariants(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openSSD(t, dir, 64<<20)
	if got := s.lruKeys(); !slices.Equal(got, order) {
		t.Fatalf("restored LRU order %v, want the order of the writes %v", got, order)
	}
	s.Close()

	// A smaller capacity evicts the coldest pages: all but the last two.
	keep := int64(sizes[len(sizes)-1] + sizes[len(sizes)-2])
	s = openSSD(t, dir, keep+100)
	st = s.Stats()
	if st.RestoredPages != int64(len(sizes)) || st.Pages != 2 || st.UsedBytes != keep || st.Evictions != uint64(len(sizes)-2) {
		t.Fatalf("restored into a smaller capacity: %+v", st)
	}
	for i := range sizes {
		if want := i >= len(sizes)-2; s.Contains(sk(i, 1)) != want {
			t.Fatalf("page %d kept: %v, want %v", i, !want, want)
		}
	}
	checkSSDInvariants(t, s)
	s.Close()
	s = openSSD(t, dir, 64<<20)
	if st := s.Stats(); st.RestoredPages != 2 {
		t.Fatalf("evicted pages came back: %+v", st)
	}
	s.Close()

	// Another namespace is refused, and the database is closed again.
	_, err := OpenSSDTier(SSDOptions{Dir: dir, Capacity: 1 << 20, Namespace: "other"})
	if !errors.Is(err, ErrNamespace) || !strings.Contains(err.Error(), `"other"`) ||
		!strings.Contains(err.Error(), `"test"`) || !strings.Contains(err.Error(), dir) {
		t.Fatalf("open under another namespace: %v", err)
	}
	s = openSSD(t, dir, 64<<20)
	s.Close()

	// The empty namespace is one too.
	empty := t.TempDir()
	e, err := OpenSSDTier(SSDOptions{Dir: empty, Capacity: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
	if _, err := OpenSSDTier(SSDOptions{Dir: empty, Capacity: 1 << 20, Namespace: "x"}); !errors.Is(err, ErrNamespace) {
		t.Fatalf("empty namespace reopened as another: %v", err)
	}
	e, err = OpenSSDTier(SSDOptions{Dir: empty, Capacity: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	e.Close()
}

func TestSSDCorruption(t *testing.T) {
	const size = 8192
	s := openSSD(t, t.TempDir(), 1<<20)
	defer s.Close()
	write := func(i int) PageKey {
		t.Helper()
		if err := s.Write(ssdPageFor(sk(i, 0), size)); err != nil {
			t.Fatal(err)
		}
		return sk(i, 0)
	}
	good := write(0)
	cases := []struct {
		name    string
		corrupt func(k PageKey) error
	}{
		{"flipped payload bit", func(k PageKey) error { return s.flipRawByte(k, ssdHeaderLen+size-1) }},
		{"flipped checksum bit", func(k PageKey) error { return s.flipRawByte(k, ssdSumOff+3) }},
		{"flipped length bit", func(k PageKey) error { return s.flipRawByte(k, 7) }},
		{"flipped magic", func(k PageKey) error { return s.flipRawByte(k, 0) }},
		{"another page's value", func(k PageKey) error {
			v, err := s.rawValue(good)
			if err != nil {
				return err
			}
			return s.setRawValue(k, v)
		}},
		{"truncated value", func(k PageKey) error {
			v, err := s.rawValue(k)
			if err != nil {
				return err
			}
			return s.setRawValue(k, v[:len(v)-100])
		}},
		{"short value", func(k PageKey) error { return s.setRawValue(k, []byte{1, 2, 3}) }},
		{"empty value", func(k PageKey) error { return s.setRawValue(k, nil) }},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			k := write(i + 1)
			before := s.Stats()
			if err := c.corrupt(k); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 2*size)
			p, err := s.Read(k, buf)
			if !errors.Is(err, ErrChecksum) || p != nil {
				t.Fatalf("read of a corrupt page: %v, %v; want ErrChecksum and no page", p, err)
			}
			st := s.Stats()
			if st.ChecksumFailures != before.ChecksumFailures+1 || st.Pages != before.Pages-1 || st.UsedBytes != before.UsedBytes-size {
				t.Fatalf("stats after the failure %+v, before %+v", st, before)
			}
			if s.Contains(k) || s.Pin(k) {
				t.Fatal("dropped page still stored")
			}
			if _, err := s.Read(k, buf); !errors.Is(err, ErrNotFound) {
				t.Fatalf("second read: %v, want ErrNotFound", err)
			}
			if _, err := s.rawValue(k); !errors.Is(err, badger.ErrKeyNotFound) {
				t.Fatalf("dropped page still in Badger: %v", err)
			}
			// Written again, it reads back.
			write(i + 1)
			p, err = s.Read(k, buf)
			if err != nil {
				t.Fatal(err)
			}
			checkSSDPage(t, p, k, size)
			checkSSDInvariants(t, s)
		})
	}
	p, err := s.Read(good, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkSSDPage(t, p, good, size)
}

func TestSSDCorruptPinned(t *testing.T) {
	const size = 4096
	s := openSSD(t, t.TempDir(), 4*size)
	defer s.Close()
	k := sk(7, 2)
	if err := s.Write(ssdPageFor(k, size)); err != nil {
		t.Fatal(err)
	}
	if !s.Pin(k) || !s.Pin(k) {
		t.Fatal("pin failed")
	}
	if err := s.flipRawByte(k, 100); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(k, nil); !errors.Is(err, ErrChecksum) {
		t.Fatalf("read: %v, want ErrChecksum", err)
	}
	if s.Contains(k) || s.Pin(k) {
		t.Fatal("page dropped while pinned still present")
	}
	if _, err := s.Read(k, nil); !errors.Is(err, ErrNotFound) {
		t.Fatalf("read of a dropped page: %v", err)
	}
	if st := s.Stats(); st.PinnedBytes != 0 || st.UsedBytes != 0 || st.Pages != 0 {
		t.Fatalf("dropped page still counted: %+v", st)
	}
	checkSSDInvariants(t, s)
	// The pins are still released one by one.
	if err := s.Unpin(k); err != nil {
		t.Fatalf("unpin of a dropped page: %v", err)
	}
	// Written again, the page is back with the pin that is left.
	if err := s.Write(ssdPageFor(k, size)); err != nil {
		t.Fatal(err)
	}
	if !s.Contains(k) {
		t.Fatal("rewritten page absent")
	}
	if st := s.Stats(); st.PinnedBytes != size || st.UsedBytes != size || st.Pages != 1 {
		t.Fatalf("revived page: %+v", st)
	}
	checkSSDInvariants(t, s)
	if err := s.Unpin(k); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(k); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("unpin past the pins: %v", err)
	}
	p, err := s.Read(k, nil)
	if err != nil {
		t.Fatal(err)
	}
	checkSSDPage(t, p, k, size)
	checkSSDInvariants(t, s)

	// Dropped while pinned, then the last pin goes: the page leaves.
	if !s.Pin(k) {
		t.Fatal("pin failed")
	}
	if err := s.flipRawByte(k, ssdHeaderLen); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(k, nil); !errors.Is(err, ErrChecksum) {
		t.Fatalf("read: %v, want ErrChecksum", err)
	}
	if err := s.Unpin(k); err != nil {
		t.Fatal(err)
	}
	if err := s.Unpin(k); !errors.Is(err, ErrNotPinned) {
		t.Fatalf("unpin past the pins: %v", err)
	}
	checkSSDInvariants(t, s)
	if st := s.Stats(); st.ChecksumFailures != 2 {
		t.Fatalf("checksum failures %d, want 2", st.ChecksumFailures)
	}
}

func TestSSDOpenErrors(t *testing.T) {
	// A path below a regular file cannot be a directory, root or not.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := OpenSSDTier(SSDOptions{Dir: filepath.Join(file, "kv"), Capacity: 1 << 20}); err == nil {
		s.Close()
		t.Fatal("tier opened below a regular file")
	}
	if os.Geteuid() == 0 {
		t.Log("running as root, which ignores permissions: read-only directory not tested")
		return
	}
	ro := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(ro, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(ro, 0o700)
	if s, err := OpenSSDTier(SSDOptions{Dir: ro, Capacity: 1 << 20}); err == nil {
		s.Close()
		t.Fatal("tier opened in a read-only directory")
	}
	if s, err := OpenSSDTier(SSDOptions{Dir: filepath.Join(ro, "kv"), Capacity: 1 << 20}); err == nil {
		s.Close()
		t.Fatal("tier opened below a read-only directory")
	}
}

func TestSSDOpenLocked(t *testing.T) {
	dir := t.TempDir()
	s := openSSD(t, dir, 1<<20)
	defer s.Close()
	if s2, err := OpenSSDTier(SSDOptions{Dir: dir, Capacity: 1 << 20, Namespace: "test"}); err == nil {
		s2.Close()
		t.Fatal("a directory in use opened twice")
	}
}

func TestSSDWriteErrors(t *testing.T) {
	const size = 4096
	s := openSSD(t, t.TempDir(), 2*size)
	defer s.Close()
	for i := range 2 {
		if err := s.Write(ssdPageFor(sk(i, 0), size)); err != nil {
			t.Fatal(err)
		}
	}
	disk := errors.New("no space left on device")
	s.writeHook = func(PageKey) error { return disk }
	err := s.Write(ssdPageFor(sk(2, 0), size))
	if !errors.Is(err, disk) || !strings.Contains(err.Error(), sk(2, 0).String()) {
		t.Fatalf("write on a failing disk: %v", err)
	}
	st := s.Stats()
	if st.WriteErrors != 1 || st.PagesWritten != 2 || st.UsedBytes != size || st.Pages != 1 || s.Contains(sk(2, 0)) {
		t.Fatalf("after a failed write (which evicted page 0): %+v", st)
	}
	if _, err := s.rawValue(sk(0, 0)); !errors.Is(err, badger.ErrKeyNotFound) {
		t.Fatalf("page evicted by a failed write still in Badger: %v", err)
	}
	checkSSDInvariants(t, s)
	// A dropped pinned page that fails to be written again stays dead.
	k := sk(1, 0)
	if !s.Pin(k) {
		t.Fatal("pin failed")
	}
	s.writeHook = nil
	if err := s.flipRawByte(k, 50); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Read(k, nil); !errors.Is(err, ErrChecksum) {
		t.Fatal(err)
	}
	s.writeHook = func(PageKey) error { return disk }
	if err := s.Write(ssdPageFor(k, size)); !errors.Is(err, disk) {
		t.Fatal(err)
	}
	checkSSDInvariants(t, s)
	if s.Contains(k) {
		t.Fatal("failed write revived a page")
	}
	if err := s.Unpin(k); err != nil {
		t.Fatal(err)
	}
	s.writeHook = nil
	if err := s.Write(ssdPageFor(k, size)); err != nil {
		t.Fatal(err)
	}
	if st := s.Stats(); st.WriteErrors != 2 || st.Pages != 1 || st.PinnedBytes != 0 {
		t.Fatalf("stats %+v", st)
	}
	checkSSDInvariants(t, s)
}

func TestSSDClosed(t *testing.T) {
	s := openSSD(t, t.TempDir(), 1<<20)
	if err := s.Write(ssdPageFor(sk(1, 0), 2000)); err != nil {
		t.Fatal(err)
	}
	if !s.Pin(sk(1, 0)) {
		t.Fatal("pin failed")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if err := s.Write(ssdPageFor(sk(2, 0), 2000)); !errors.Is(err, ErrClosed) {
		t.Fatalf("write after close: %v", err)
	}
	if _, err := s.Read(sk(1, 0), nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("read after close: %v", err)
	}
	if err := s.Unpin(sk(1, 0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("unpin after close: %v", err)
	}
	if s.Contains(sk(1, 0)) || s.Pin(sk(1, 0)) {
		t.Fatal("closed tier serves pages")
	}
	if st := s.Stats(); st.Pages != 1 || st.DiskBytes == 0 {
		t.Fatalf("stats after close %+v", st)
	}
}

func TestSSDValueLogGC(t *testing.T) {
	// Evictions leave garbage in the value log; with a period of a few
	// milliseconds the GC goroutine runs during the writes and is stopped by
	// Close (goleak checks it).
	s, err := OpenSSDTier(SSDOptions{Dir: t.TempDir(), Capacity: 1 << 20, GCInterval: 5 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 64 {
		if err := s.Write(ssdPageFor(sk(i, 0), 256<<10)); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(20 * time.Millisecond)
	if st := s.Stats(); st.Pages != 4 || st.Evictions != 60 {
		t.Fatalf("stats %+v", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	off, err := OpenSSDTier(SSDOptions{Dir: t.TempDir(), Capacity: 1 << 20, GCInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if off.gcStop != nil {
		t.Fatal("GC started though disabled")
	}
	off.Close()
}

func TestSSDConcurrentSameKey(t *testing.T) {
	s := openSSD(t, t.TempDir(), 1<<20)
	defer s.Close()
	k := sk(3, 3)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			if err := s.Write(ssdPageFor(k, 64<<10)); err != nil {
				t.Error(err)
			}
			p, err := s.Read(k, nil)
			if err != nil {
				t.Error(err)
				return
			}
			checkSSDPage(t, p, k, 64<<10)
		})
	}
	wg.Wait()
	if st := s.Stats(); st.PagesWritten != 1 || st.UsedBytes != 64<<10 {
		t.Fatalf("8 concurrent writes of one key: %+v", st)
	}
	checkSSDInvariants(t, s)
}

// ssdStressSize is the size of key's page in the stress test: 1 to 8 KiB,
// a function of the key so that rewrites store the same page.
func ssdStressSize(k PageKey) int {
	return 1<<10 + int(ssdMix64(uint64(k.Block)*7+uint64(k.Layer))%(7<<10))
}

func TestSSDConcurrentStress(t *testing.T) {
	const (
		goroutines = 8
		ops        = 1500
		keys       = 48
		capacity   = 96 << 10
	)
	dir := t.TempDir()
	s := openSSD(t, dir, capacity)
	var wg sync.WaitGroup
	var failed sync.Once
	fail := func(format string, a ...any) {
		failed.Do(func() { t.Errorf(format, a...) })
	}
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 99))
			var pins []PageKey
			buf := make([]byte, 8<<10)
			for i := range ops {
				k := sk(r.IntN(keys/2), r.IntN(2))
				switch op := r.IntN(10); {
				case op < 4:
					if err := s.Write(ssdPageFor(k, ssdStressSize(k))); err != nil && !errors.Is(err, ErrNoSpace) {
						fail("write %s: %v", k, err)
					}
				case op < 8:
					p, err := s.Read(k, buf)
					switch {
					case errors.Is(err, ErrNotFound):
					case err != nil:
						fail("read %s: %v", k, err)
					default:
						want := ssdPageFor(k, ssdStressSize(k))
						if p.Key != k || !bytes.Equal(p.K, want.K) || !bytes.Equal(p.V, want.V) {
							fail("read %s: wrong bytes", k)
						}
					}
				case op < 9:
					if len(pins) < 2 && s.Pin(k) {
						pins = append(pins, k)
					}
				default:
					if len(pins) > 0 {
						if err := s.Unpin(pins[0]); err != nil {
							fail("unpin %s: %v", pins[0], err)
						}
						pins = pins[1:]
					}
				}
				if i%100 == 0 {
					if st := s.Stats(); st.UsedBytes > capacity {
						fail("%d bytes used over a capacity of %d", st.UsedBytes, capacity)
					}
				}
			}
			for _, k := range pins {
				if err := s.Unpin(k); err != nil {
					fail("unpin %s: %v", k, err)
				}
			}
		})
	}
	wg.Wait()
	checkSSDInvariants(t, s)
	st := s.Stats()
	live := s.liveKeys()
	if st.ChecksumFailures != 0 || st.WriteErrors != 0 || st.PinnedBytes != 0 || st.Pages != int64(len(live)) || st.UsedBytes > capacity {
		t.Fatalf("after the stress: %+v, %d pages indexed", st, len(live))
	}
	var used int64
	for _, k := range live {
		used += int64(ssdStressSize(k))
	}
	if used != st.UsedBytes {
		t.Fatalf("indexed pages make %d bytes, stats say %d", used, st.UsedBytes)
	}
	t.Logf("%d hits, %d misses, %d pages written, %d evicted, %d left", st.Hits, st.Misses, st.PagesWritten, st.Evictions, st.Pages)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// What was left is what comes back.
	s = openSSD(t, dir, capacity)
	defer s.Close()
	restored := s.liveKeys()
	slices.SortFunc(live, ssdCompareKeys)
	slices.SortFunc(restored, ssdCompareKeys)
	if !slices.Equal(live, restored) {
		t.Fatalf("restored %v, had %v", restored, live)
	}
	for _, k := range restored {
		p, err := s.Read(k, nil)
		if err != nil {
			t.Fatal(err)
		}
		checkSSDPage(t, p, k, ssdStressSize(k))
	}
	if st := s.Stats(); st.UsedBytes != used {
		t.Fatalf("restored %d bytes, had %d", st.UsedBytes, used)
	}
}

func ssdCompareKeys(a, b PageKey) int {
	if a.Block != b.Block {
		if a.Block < b.Block {
			return -1
		}
		return 1
	}
	return a.Layer - b.Layer
}

func TestSSDStoredValueLen(t *testing.T) {
	// The inverse of Badger's ValueSize, on both sides of every varint
	// boundary up to 1 GiB (the restore test checks it against Badger).
	valueSize := func(vlen int64, keyLen int) int64 {
		if vlen < ssdValueThreshold {
			return vlen
		}
		entry := 2 + int64(uvarintLen(uint64(keyLen+8))+uvarintLen(uint64(vlen))+1) + int64(keyLen) + 8 + vlen + 4
		return entry - int64(keyLen+8) - 6 - 4
	}
	for _, v := range []int64{0, 1, 1023, 1024, 1025, 16383, 16384, 16385, 1<<21 - 1, 1 << 21, 1<<21 + 1, 1<<28 - 1, 1 << 28, 1 << 30} {
		if got := ssdStoredValueLen(valueSize(v, ssdKeyLen), ssdKeyLen); got != v {
			t.Errorf("value of %d bytes: recovered %d", v, got)
		}
	}
}

func ExampleOpenSSDTier() {
	dir, err := os.MkdirTemp("", "ssd")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	s, err := OpenSSDTier(SSDOptions{Dir: dir, Capacity: 1 << 30, Namespace: "qwen3-vl-2b/bf16/64"})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()
	key := PageKey{Block: ChainKey(RootKey, []int32{1, 2, 3}, nil), Layer: 0}
	if err := s.Write(&Page{Key: key, K: []byte("keys"), V: []byte("values")}); err != nil {
		fmt.Println(err)
		return
	}
	p, err := s.Read(key, nil)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("%s %s\n", p.K, p.V)
	// Output: keys values
}

func TestSSDValueFormat(t *testing.T) {
	// Pages on disk outlive builds: pin one encoded value's checksum so
	// that a change of the format (or of the hash) is noticed, and bumps
	// ssdFormat.
	key := PageKey{Block: 0x0123456789, Layer: -3}
	p := ssdPageFor(key, 100_003)
	var kb [ssdKeyLen]byte
	encodeSSDKey(kb[:], key)
	v := encodeSSDValue(make([]byte, ssdHeaderLen+int(p.Size())), kb[:], p)
	if got, want := binary.BigEndian.Uint64(v[ssdSumOff:]), uint64(0x27ea088c4e5a0b51); got != want {
		t.Fatalf("checksum %#x, want %#x: the stored format changed", got, want)
	}
	if !bytes.Equal(v[:ssdSumOff], []byte{'K', 'V', ssdFormat, 0, 0, 0, 0xc3, 0x51, 0, 0, 0xc3, 0x52}) {
		t.Fatalf("header %x", v[:ssdSumOff])
	}
	k, vv, err := decodeSSDValue(kb[:], v, nil)
	if err != nil || !bytes.Equal(k, p.K) || !bytes.Equal(vv, p.V) {
		t.Fatalf("decode: %v", err)
	}
}

// TestSSDStaleFormat stores intact pages of other formats (format 1, which
// held keys in rows, and a later one): a read drops each as a miss
// (ErrNotFound) counted in StalePages, not as a checksum failure; a flip
// of the format byte of a current page is one.
func TestSSDStaleFormat(t *testing.T) {
	const size = 8192
	s := openSSD(t, t.TempDir(), 1<<20)
	defer s.Close()
	for i, format := range []byte{1, ssdFormat + 1} {
		k := sk(i, 0)
		if err := s.Write(ssdPageFor(k, size)); err != nil {
			t.Fatal(err)
		}
		v, err := s.rawValue(k)
		if err != nil {
			t.Fatal(err)
		}
		var kb [ssdKeyLen]byte
		encodeSSDKey(kb[:], k)
		v[2] = format
		sum := copySum(make([]byte, len(v)-ssdHeaderLen), v[ssdHeaderLen:], nil, ssdSumHead(kb[:], v))
		binary.BigEndian.PutUint64(v[ssdSumOff:], sum)
		if err := s.setRawValue(k, v); err != nil {
			t.Fatal(err)
		}
		before := s.Stats()
		p, err := s.Read(k, nil)
		if !errors.Is(err, ErrNotFound) || errors.Is(err, ErrChecksum) || p != nil {
			t.Fatalf("format %d: read %v, %v; want ErrNotFound and no page", format, p, err)
		}
		st := s.Stats()
		if st.StalePages != before.StalePages+1 || st.ChecksumFailures != before.ChecksumFailures || st.Misses != before.Misses+1 || st.Pages != before.Pages-1 {
			t.Fatalf("format %d: stats after the read %+v, before %+v", format, st, before)
		}
		if _, err := s.rawValue(k); !errors.Is(err, badger.ErrKeyNotFound) {
			t.Fatalf("format %d: stale page still in Badger: %v", format, err)
		}
		checkSSDInvariants(t, s)
	}
	k := sk(9, 0)
	if err := s.Write(ssdPageFor(k, size)); err != nil {
		t.Fatal(err)
	}
	if err := s.flipRawByte(k, 2); err != nil {
		t.Fatal(err)
	}
	before := s.Stats()
	if _, err := s.Read(k, nil); !errors.Is(err, ErrChecksum) {
		t.Fatalf("a flipped format byte: %v, want ErrChecksum", err)
	}
	if st := s.Stats(); st.ChecksumFailures != before.ChecksumFailures+1 || st.StalePages != before.StalePages {
		t.Fatalf("a flipped format byte: stats %+v, before %+v", st, before)
	}
}

// TestSSDDiskFull: with more free space asked for than the disk has, every
// Write of a new page fails with ErrDiskFull (an ErrNoSpace too), counted
// in WriteErrors, before anything is evicted or Badger takes any byte; a
// Write of a page already stored only marks it recent, and the pages
// stored still read back. Without the check (MinFree < 0) the same tier
// writes. MinFree 0 keeps DefaultSSDMinFree and one value-log file.
func TestSSDDiskFull(t *testing.T) {
	const size = 8192
	free, ok := diskFree(t.TempDir())
	if !ok {
		t.Skip("this system cannot tell a disk's free space")
	}
	if free == 0 {
		t.Fatal("diskFree reports 0 bytes free on a disk this test just wrote a directory to")
	}
	dir := t.TempDir()
	s, err := OpenSSDTier(SSDOptions{Dir: dir, Capacity: 1 << 20, Namespace: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if want := DefaultSSDMinFree + SSDBadgerOptions(dir, SSDOptions{Capacity: 1 << 20}).ValueLogFileSize; s.minFree != want {
		t.Errorf("MinFree 0 keeps %d bytes free, want %d", s.minFree, want)
	}
	stored := sk(0, 0)
	if err := s.Write(ssdPageFor(stored, size)); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		minFree int64
		full    bool
	}{{int64(free) * 4, true}, {1 << 62, true}, {-1, false}} {
		s, err := OpenSSDTier(SSDOptions{Dir: dir, Capacity: 1 << 20, Namespace: "test", MinFree: c.minFree})
		if err != nil {
			t.Fatal(err)
		}
		before := s.Stats()
		k := sk(1, 0)
		err = s.Write(ssdPageFor(k, size))
		st := s.Stats()
		if c.full {
			if !errors.Is(err, ErrDiskFull) || !errors.Is(err, ErrNoSpace) {
				t.Errorf("MinFree %d: write %v, want ErrDiskFull and ErrNoSpace", c.minFree, err)
			}
			if st.WriteErrors != before.WriteErrors+1 || st.Pages != before.Pages || st.UsedBytes != before.UsedBytes || s.Contains(k) {
				t.Errorf("MinFree %d: stats %+v after a refused write, before %+v", c.minFree, st, before)
			}
			if err := s.Write(ssdPageFor(stored, size)); err != nil {
				t.Errorf("MinFree %d: write of a page already stored: %v, want nil", c.minFree, err)
			}
		} else if err != nil || !s.Contains(k) {
			t.Errorf("MinFree %d (no check): write %v", c.minFree, err)
		}
		p, err := s.Read(stored, nil)
		if err != nil {
			t.Fatalf("MinFree %d: the page stored before: %v", c.minFree, err)
		}
		checkSSDPage(t, p, stored, size)
		checkSSDInvariants(t, s)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
	}
}
