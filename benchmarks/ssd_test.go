package benchmarks

import (
	"encoding/binary"
	"math/rand/v2"
	"syscall"
	"testing"

	"github.com/dgraph-io/badger/v4"

	"github.com/kvflow/kvflow/storage"
)

const (
	// ssdBenchCapacity is the tiers' capacity: far more than a run writes,
	// so the write rows measure writing, not eviction. It also sets the
	// value-log file size (1 GiB) of both implementations.
	ssdBenchCapacity = 64 << 30
	// ssdBenchReadBytes is how many bytes of pages the read rows write
	// before the timer and then read in turn: four times the machine's
	// 32 MiB L3 cache, so that pages come from memory (the page cache) as
	// they would from a real tier, not from the CPU's cache.
	ssdBenchReadBytes = 128 << 20
)

// ssdBench is one implementation under test: write stores a page of the
// benchmark's size under the i-th key, read reads the i-th key back into a
// reused buffer.
type ssdBench struct {
	write func(i int) error
	read  func(i int) error
	close func() error
}

// BenchmarkSSDTier compares kvflow's SSD tier with raw Badger, opened with
// the same options (storage.SSDBadgerOptions), on pages of 256 KiB and
// 2 MiB:
//
//   - kvflow write: SSDTier.Write of a page under a fresh key; read:
//     SSDTier.Read into a reused buffer, checksum verified, over
//     ssdBenchReadBytes of pages written before the timer, in turn.
//   - badger write: db.Update with txn.Set of a value of the page's size
//     (no header); read: db.View, txn.Get and item.ValueCopy into a reused
//     buffer.
//
// write and read run with Sync off; write-sync with Badger's SyncWrites, an
// fsync per page. The capacity is never reached: eviction is not measured.
func BenchmarkSSDTier(b *testing.B) {
	impls := []struct {
		name string
		open func(b *testing.B, size int, sync bool) ssdBench
	}{
		{"kvflow", openKvflowSSD},
		{"badger", openRawBadger},
	}
	sizes := []struct {
		name string
		n    int
	}{{"256KiB", 256 << 10}, {"2MiB", 2 << 20}}
	// The two implementations of a row run one after the other, so that
	// they see the machine (and its disk's writeback) in the same state.
	for _, op := range []string{"write", "read", "write-sync"} {
		for _, size := range sizes {
			for _, impl := range impls {
				b.Run(impl.name+"/"+op+"/"+size.name, func(b *testing.B) {
					s := impl.open(b, size.n, op == "write-sync")
					defer func() {
						if err := s.close(); err != nil {
							b.Error(err)
						}
					}()
					f := s.write
					if op == "read" {
						for i := range ssdBenchReadBytes / size.n {
							if err := s.write(i); err != nil {
								b.Fatal(err)
							}
						}
						f = s.read
					}
					// Start from clean page cache: no writeback of an
					// earlier row's pages during this one.
					syscall.Sync()
					b.SetBytes(int64(size.n))
					b.ResetTimer()
					for i := range b.N {
						if err := f(i); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}

// ssdBenchBytes returns n random bytes (KV pages do not compress).
func ssdBenchBytes(n int) []byte {
	r := rand.New(rand.NewPCG(uint64(n), 7))
	b := make([]byte, n)
	for i := 0; i+8 <= n; i += 8 {
		binary.LittleEndian.PutUint64(b[i:], r.Uint64())
	}
	return b
}

func ssdBenchOptions(dir string, sync bool) storage.SSDOptions {
	return storage.SSDOptions{Dir: dir, Capacity: ssdBenchCapacity, Sync: sync, Namespace: "bench", GCInterval: -1}
}

func ssdBenchKey(i int) storage.PageKey {
	return storage.PageKey{Block: storage.BlockKey(i / 28), Layer: i % 28}
}

func openKvflowSSD(b *testing.B, size int, sync bool) ssdBench {
	t, err := storage.OpenSSDTier(ssdBenchOptions(b.TempDir(), sync))
	if err != nil {
		b.Fatal(err)
	}
	data := ssdBenchBytes(size)
	page := &storage.Page{K: data[:size/2], V: data[size/2:]}
	buf := make([]byte, size)
	return ssdBench{
		write: func(i int) error {
			page.Key = ssdBenchKey(i)
			return t.Write(page)
		},
		read: func(i int) error {
			_, err := t.Read(ssdBenchKey(i%(ssdBenchReadBytes/size)), buf)
			return err
		},
		close: t.Close,
	}
}

func openRawBadger(b *testing.B, size int, sync bool) ssdBench {
	dir := b.TempDir()
	db, err := badger.Open(storage.SSDBadgerOptions(dir, ssdBenchOptions(dir, sync)))
	if err != nil {
		b.Fatal(err)
	}
	val := ssdBenchBytes(size)
	buf := make([]byte, size)
	// The same 13-byte keys as the tier's.
	key := func(i int) []byte {
		k := ssdBenchKey(i)
		kb := make([]byte, 13)
		kb[0] = 'p'
		binary.BigEndian.PutUint64(kb[1:], uint64(k.Block))
		binary.BigEndian.PutUint32(kb[9:], uint32(k.Layer))
		return kb
	}
	return ssdBench{
		write: func(i int) error {
			return db.Update(func(txn *badger.Txn) error { return txn.Set(key(i), val) })
		},
		read: func(i int) error {
			return db.View(func(txn *badger.Txn) error {
				item, err := txn.Get(key(i % (ssdBenchReadBytes / size)))
				if err != nil {
					return err
				}
				buf, err = item.ValueCopy(buf)
				return err
			})
		},
		close: db.Close,
	}
}
