package storage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"
)

func addr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }

func TestArena(t *testing.T) {
	a, err := NewArena(ArenaOptions{Size: 1<<20 - 5})
	if err != nil {
		t.Fatal(err)
	}
	if a.Size() != 1<<20 {
		t.Fatalf("Size() = %d, want 1 MiB", a.Size())
	}
	if base := addr(a.mem); base%4096 != 0 {
		t.Fatalf("arena memory at %#x is not 4 KiB-aligned", base)
	}
	var blocks []Block
	for i, n := range []int64{1, 64, 65, 1000, 4096, 5000, 3, 100_000} {
		var blk Block
		if i%2 == 0 {
			blk, err = a.Alloc(n)
		} else {
			blk, err = a.AllocAligned(n, 4096)
		}
		if err != nil {
			t.Fatalf("Alloc(%d): %v", n, err)
		}
		if int64(len(blk.Bytes)) != n || int64(cap(blk.Bytes)) != n || blk.Size < n {
			t.Fatalf("Alloc(%d): len %d, cap %d, size %d", n, len(blk.Bytes), cap(blk.Bytes), blk.Size)
		}
		if got := addr(blk.Bytes) - addr(a.mem); int64(got) != blk.Off {
			t.Fatalf("Alloc(%d): bytes at offset %d, block at %d", n, got, blk.Off)
		}
		if addr(blk.Bytes)%64 != 0 || (i%2 == 1 && addr(blk.Bytes)%4096 != 0) {
			t.Fatalf("Alloc(%d) (aligned: %v): address %#x", n, i%2 == 1, addr(blk.Bytes))
		}
		for j := range blk.Bytes {
			blk.Bytes[j] = byte(i + 1)
		}
		blocks = append(blocks, blk)
	}
	// The slices are disjoint: every block still holds its own byte.
	for i, blk := range blocks {
		for j, c := range blk.Bytes {
			if c != byte(i+1) {
				t.Fatalf("block %d byte %d is %d: blocks overlap", i, j, c)
			}
		}
	}
	// Appending cannot write into the next block.
	grown := append(blocks[0].Bytes, 0xee)
	if addr(grown) == addr(blocks[0].Bytes) {
		t.Fatal("append to a Block's Bytes did not reallocate")
	}
	s := a.Stats()
	var used, requested int64
	for _, blk := range blocks {
		used += blk.Size
		requested += int64(len(blk.Bytes))
	}
	if s.Used != used || s.Requested != requested || s.Allocs != uint64(len(blocks)) {
		t.Fatalf("stats %+v; want used %d, requested %d", s, used, requested)
	}
	if err := a.Free(blocks[7].Off + 64); !errors.Is(err, ErrInvalidFree) {
		t.Fatalf("Free inside a block: %v", err)
	}
	for _, blk := range blocks {
		if err := a.Free(blk.Off); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Free(blocks[0].Off); !errors.Is(err, ErrInvalidFree) {
		t.Fatalf("double Free: %v", err)
	}
	if s := a.Stats(); s.Used != 0 || s.LargestFree != a.Size() {
		t.Fatalf("after freeing everything: %+v", s)
	}
	if _, err := a.Alloc(0); !errors.Is(err, ErrInvalidSize) {
		t.Fatalf("Alloc(0): %v", err)
	}
	if _, err := a.AllocAligned(64, 3); !errors.Is(err, ErrInvalidSize) {
		t.Fatalf("AllocAligned(64, 3): %v", err)
	}
	if _, err := NewArena(ArenaOptions{Size: 1 << 20, MinBlock: 48}); err == nil {
		t.Fatal("NewArena with MinBlock 48 succeeded")
	}
}

// TestArenaConcurrent runs 8 goroutines × 100,000 mixed operations on a
// 1 MiB arena small enough to run out now and then: allocations of 1 byte to
// 16 KiB (a tenth of them page-aligned), frees of random live blocks, and
// invalid frees inside live blocks. Every block gets a pattern unique to its
// goroutine and allocation, checked before it is freed, so overlapping
// blocks show as corrupt bytes (and as data races under -race). At the end
// every block is freed and the arena must be whole again.
//
// 8 × 100,000 operations take about 0.3 s, and 3 to 5 s under -race, on the
// two-core development machine; -short runs a tenth of them.
func TestArenaConcurrent(t *testing.T) {
	const goroutines, maxLive = 8, 64
	ops := 100_000
	if testing.Short() {
		ops /= 10
	}
	a, err := NewArena(ArenaOptions{Size: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	var (
		wg      sync.WaitGroup
		mu      sync.Mutex
		allocs  uint64
		full    int
		errs    []error
		maxSize = 16 << 10
	)
	for g := range goroutines {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 7))
			// pattern[i:] is what a block whose allocation number is i
			// holds after its first 8 bytes, which hold that number.
			pattern := make([]byte, maxSize+256)
			for i := range pattern {
				pattern[i] = byte(r.Uint32())
			}
			type liveBlock struct {
				Block
				seq uint64 // the goroutine's allocation number, which picks the pattern
			}
			var live []liveBlock
			var seq uint64
			oom := 0
			// fill writes the pattern of allocation i: i and g in the first 8
			// bytes, then bytes of the goroutine's random pattern from i%256 on.
			fill := func(b []byte, i uint64) {
				var head [8]byte
				binary.LittleEndian.PutUint64(head[:], i<<8|uint64(g))
				copy(b[copy(b, head[:]):], pattern[i%256:])
			}
			scratch := make([]byte, maxSize)
			free := func(i int) error {
				blk := live[i]
				want := scratch[:len(blk.Bytes)]
				fill(want, blk.seq)
				if !bytes.Equal(blk.Bytes, want) {
					return fmt.Errorf("goroutine %d: block at %d of %d bytes was overwritten", g, blk.Off, len(blk.Bytes))
				}
				if err := a.Free(blk.Off); err != nil {
					return fmt.Errorf("goroutine %d: %w", g, err)
				}
				live[i] = live[len(live)-1]
				live = live[:len(live)-1]
				return nil
			}
			err := func() error {
				for range ops {
					switch v := r.IntN(100); {
					case v < 50 && len(live) < maxLive:
						size := 1 + r.Int64N(int64(1)<<r.IntN(15))
						var blk Block
						var err error
						if v < 5 {
							blk, err = a.AllocAligned(size, 4096)
						} else {
							blk, err = a.Alloc(size)
						}
						if errors.Is(err, ErrOutOfMemory) {
							oom++
							if len(live) > 0 {
								if err := free(r.IntN(len(live))); err != nil {
									return err
								}
							}
							continue
						}
						if err != nil {
							return fmt.Errorf("goroutine %d: Alloc(%d): %w", g, size, err)
						}
						if int64(len(blk.Bytes)) != size || int64(cap(blk.Bytes)) != size ||
							blk.Off%blk.Size != 0 || (v < 5 && blk.Off%4096 != 0) {
							return fmt.Errorf("goroutine %d: Alloc(%d) = offset %d, size %d, len %d, cap %d",
								g, size, blk.Off, blk.Size, len(blk.Bytes), cap(blk.Bytes))
						}
						fill(blk.Bytes, seq)
						live = append(live, liveBlock{blk, seq})
						seq++
					case v < 97 && len(live) > 0:
						if err := free(r.IntN(len(live))); err != nil {
							return err
						}
					case len(live) > 0:
						blk := live[r.IntN(len(live))]
						if blk.Size < 128 {
							continue
						}
						if err := a.Free(blk.Off + blk.Size/2); !errors.Is(err, ErrInvalidFree) {
							return fmt.Errorf("goroutine %d: Free inside a live block: %v", g, err)
						}
					}
				}
				for len(live) > 0 {
					if err := free(len(live) - 1); err != nil {
						return err
					}
				}
				return nil
			}()
			mu.Lock()
			defer mu.Unlock()
			allocs += seq
			full += oom
			if err != nil {
				errs = append(errs, err)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	s := a.Stats()
	if s.Used != 0 || s.Requested != 0 || s.LargestFree != a.Size() || s.Fragmentation != 0 ||
		s.Allocs != allocs || s.Frees != allocs || s.Failures != uint64(full) || s.Peak > a.Size() {
		t.Fatalf("after freeing everything: %+v; %d allocations, %d out of memory", s, allocs, full)
	}
	if err := a.buddy.verify(nil); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d allocations, %d out of memory, peak %d of %d bytes", allocs, full, s.Peak, a.Size())
}
