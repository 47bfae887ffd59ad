package benchmarks

import (
	"strconv"
	"sync"
	"testing"

	"github.com/kvflow/kvflow/storage"
)

// allocWindow is how many blocks each goroutine keeps live: every operation
// allocates a block and frees the oldest.
const allocWindow = 8

// BenchmarkAlloc measures an allocate+free pair of 64 KiB, 256 KiB and 2 MiB
// blocks with a window of live blocks, from 1 and 2 goroutines, for kvflow's
// arena and its two baselines, run side by side so the ratios hold on a noisy
// machine:
//
//   - kvflow: Arena.Alloc and Arena.Free on a 128 MiB arena;
//   - make: make([]byte, n), the oldest reference dropped for the collector;
//   - syncpool: Get and Put of a *[]byte of n bytes on a sync.Pool.
//
// Each goroutine keeps a ring of allocWindow live blocks and writes a byte
// into every new one. b.N pairs are split between the goroutines. Names are
// BenchmarkAlloc/<impl>/<size>/<goroutines>; ops/s is pairs per second over
// all goroutines.
func BenchmarkAlloc(b *testing.B) {
	arena, err := storage.NewArena(storage.ArenaOptions{Size: 128 << 20})
	if err != nil {
		b.Fatal(err)
	}
	for _, size := range []struct {
		name string
		n    int
	}{{"64KiB", 64 << 10}, {"256KiB", 256 << 10}, {"2MiB", 2 << 20}} {
		pool := &sync.Pool{New: func() any { buf := make([]byte, size.n); return &buf }}
		impls := []struct {
			name string
			new  func() allocRing
		}{
			{"kvflow", func() allocRing { return &arenaRing{arena: arena, n: int64(size.n)} }},
			{"make", func() allocRing { return &makeRing{n: size.n} }},
			{"syncpool", func() allocRing { return &poolRing{pool: pool} }},
		}
		for _, impl := range impls {
			for _, g := range []int{1, 2} {
				b.Run(impl.name+"/"+size.name+"/"+strconv.Itoa(g), func(b *testing.B) {
					runAllocRings(b, g, impl.new)
				})
			}
		}
	}
	if s := arena.Stats(); s.Used != 0 {
		b.Fatalf("the arena still holds %d bytes", s.Used)
	}
}

// allocRing is one goroutine's window of live blocks.
type allocRing interface {
	// fill allocates the first window; step allocates one block and frees
	// the oldest; drain frees the window.
	fill() error
	step(i int) error
	drain() error
}

func runAllocRings(b *testing.B, goroutines int, newRing func() allocRing) {
	rings := make([]allocRing, goroutines)
	for i := range rings {
		rings[i] = newRing()
		if err := rings[i].fill(); err != nil {
			b.Fatal(err)
		}
	}
	errs := make([]error, goroutines)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	for g, r := range rings {
		n := b.N / goroutines
		if g == 0 {
			n += b.N % goroutines
		}
		wg.Go(func() {
			for i := range n {
				if err := r.step(i); err != nil {
					errs[g] = err
					return
				}
			}
		})
	}
	wg.Wait()
	b.StopTimer()
	for g, r := range rings {
		if errs[g] != nil {
			b.Fatal(errs[g])
		}
		if err := r.drain(); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "ops/s")
}

type arenaRing struct {
	arena *storage.Arena
	n     int64
	live  [allocWindow]storage.Block
}

func (r *arenaRing) fill() error {
	for i := range r.live {
		blk, err := r.arena.Alloc(r.n)
		if err != nil {
			return err
		}
		r.live[i] = blk
	}
	return nil
}

func (r *arenaRing) step(i int) error {
	blk, err := r.arena.Alloc(r.n)
	if err != nil {
		return err
	}
	blk.Bytes[0] = byte(i)
	slot := &r.live[i%allocWindow]
	old := slot.Off
	*slot = blk
	return r.arena.Free(old)
}

func (r *arenaRing) drain() error {
	for _, blk := range r.live {
		if err := r.arena.Free(blk.Off); err != nil {
			return err
		}
	}
	return nil
}

type makeRing struct {
	n    int
	live [allocWindow][]byte
}

func (r *makeRing) fill() error {
	for i := range r.live {
		r.live[i] = make([]byte, r.n)
	}
	return nil
}

func (r *makeRing) step(i int) error {
	buf := make([]byte, r.n)
	buf[0] = byte(i)
	r.live[i%allocWindow] = buf // the oldest is garbage now
	return nil
}

func (r *makeRing) drain() error {
	clear(r.live[:])
	return nil
}

type poolRing struct {
	pool *sync.Pool
	live [allocWindow]*[]byte
}

func (r *poolRing) fill() error {
	for i := range r.live {
		r.live[i] = r.pool.Get().(*[]byte)
	}
	return nil
}

func (r *poolRing) step(i int) error {
	buf := r.pool.Get().(*[]byte)
	(*buf)[0] = byte(i)
	slot := &r.live[i%allocWindow]
	old := *slot
	*slot = buf
	r.pool.Put(old)
	return nil
}

func (r *poolRing) drain() error {
	for i, buf := range r.live {
		r.pool.Put(buf)
		r.live[i] = nil
	}
	return nil
}
