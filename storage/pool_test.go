package storage

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sync"
	"testing"
	"unsafe"

	"github.com/kvflow/kvflow/tensor"
)

func newTestPool(t testing.TB, size int64) *Pool {
	t.Helper()
	a, err := NewArena(ArenaOptions{Size: size})
	if err != nil {
		t.Fatal(err)
	}
	return NewPool(a)
}

func TestPoolAllocFree(t *testing.T) {
	p := newTestPool(t, 1<<20)
	k, err := p.Alloc([]int{2, 8, 64, 128 / 8}, tensor.BF16)
	if err != nil {
		t.Fatal(err)
	}
	if len(k.Data) != 2*8*64*16*2 || k.Elems() != 2*8*64*16 || k.DType != tensor.BF16 {
		t.Fatalf("tensor %v %v with %d bytes", k.Shape, k.DType, len(k.Data))
	}
	if addr := uintptr(unsafe.Pointer(&k.Data[0])); addr%4096 != 0 {
		t.Fatalf("a %d-byte tensor at %#x is not 4 KiB aligned", len(k.Data), addr)
	}
	small, err := p.Alloc([]int{3, 5}, tensor.F32)
	if err != nil {
		t.Fatal(err)
	}
	if addr := uintptr(unsafe.Pointer(&small.Data[0])); addr%64 != 0 || cap(small.Data) != 60 {
		t.Fatalf("small tensor at %#x, cap %d", addr, cap(small.Data))
	}
	empty, err := p.Alloc([]int{0, 7}, tensor.F16)
	if err != nil || len(empty.Data) != 0 {
		t.Fatalf("empty tensor: %v, %d bytes", err, len(empty.Data))
	}
	s := p.Stats()
	if s.LiveTensors != 3 || s.LiveBytes != int64(len(k.Data)+60) || s.Allocs != 3 || s.Arena.Used == 0 {
		t.Fatalf("stats %+v", s)
	}
	for _, x := range []*Tensor{k, small, empty} {
		if err := p.Free(x); err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Free(k); !errors.Is(err, ErrInvalidFree) {
		t.Fatalf("double free: %v", err)
	}
	other := newTestPool(t, 1<<16)
	x, _ := other.Alloc([]int{4}, tensor.F32)
	if err := p.Free(x); !errors.Is(err, ErrInvalidFree) {
		t.Fatalf("free into the wrong pool: %v", err)
	}
	s = p.Stats()
	if s.LiveTensors != 0 || s.LiveBytes != 0 || s.Frees != 3 || s.Arena.Used != 0 || s.Arena.LargestFree != s.Arena.Size {
		t.Fatalf("after freeing everything: %+v", s)
	}
}

func TestPoolErrors(t *testing.T) {
	p := newTestPool(t, 1<<16)
	for _, c := range []struct {
		shape []int
		dt    tensor.DType
	}{{[]int{-1}, tensor.F32}, {[]int{4}, tensor.DType(99)}, {[]int{math.MaxInt / 2, 4}, tensor.F32}} {
		if _, err := p.Alloc(c.shape, c.dt); !errors.Is(err, tensor.ErrShape) {
			t.Errorf("Alloc(%v, %v): %v, want ErrShape", c.shape, c.dt, err)
		}
	}
	if _, err := p.Alloc([]int{1 << 15}, tensor.F32); !errors.Is(err, ErrInvalidSize) {
		t.Fatalf("a tensor larger than the arena: %v, want ErrInvalidSize", err)
	}
	half, err := p.Alloc([]int{1 << 13}, tensor.F32)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Alloc([]int{1<<13 + 1}, tensor.F32); !errors.Is(err, ErrOutOfMemory) {
		t.Fatalf("a tensor larger than what is left: %v, want ErrOutOfMemory", err)
	}
	if s := p.Stats(); s.Failures != 2 || s.LiveTensors != 1 {
		t.Fatalf("stats %+v", s)
	}
	if err := p.Free(half); err != nil {
		t.Fatal(err)
	}
}

// Eight goroutines allocate and free tensors of random shapes and dtypes,
// each writing its own pattern into its tensors and checking it before the
// free: an overlap between two live tensors would show as a changed
// pattern. At the end every byte is back and the arena is one free block.
func TestPoolConcurrent(t *testing.T) {
	const goroutines, ops = 8, 100_000
	p := newTestPool(t, 8<<20)
	dts := []tensor.DType{tensor.BF16, tensor.F16, tensor.F32}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 7))
			var live []*Tensor
			// Blocks are 64-byte aligned, so two that overlap share a
			// 64-byte line: marking the first byte of every line suffices.
			check := func(x *Tensor) error {
				for i := 0; i < len(x.Data); i += 64 {
					if b := x.Data[i]; b != byte(g) {
						return fmt.Errorf("goroutine %d: byte %d of a tensor is %d: another allocation overlaps", g, i, b)
					}
				}
				return p.Free(x)
			}
			for range ops {
				if len(live) > 0 && (len(live) >= 16 || rng.IntN(2) == 0) {
					i := rng.IntN(len(live))
					if err := check(live[i]); err != nil {
						errs <- err
						return
					}
					live[i] = live[len(live)-1]
					live = live[:len(live)-1]
					continue
				}
				shape := []int{1 + rng.IntN(4), 1 + rng.IntN(64), 1 + rng.IntN(32)}
				x, err := p.Alloc(shape, dts[rng.IntN(len(dts))])
				if errors.Is(err, ErrOutOfMemory) {
					continue
				}
				if err != nil {
					errs <- err
					return
				}
				for i := 0; i < len(x.Data); i += 64 {
					x.Data[i] = byte(g)
				}
				live = append(live, x)
			}
			for _, x := range live {
				if err := check(x); err != nil {
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
	s := p.Stats()
	if s.LiveTensors != 0 || s.LiveBytes != 0 || s.Allocs != s.Frees || s.Arena.Used != 0 || s.Arena.LargestFree != s.Arena.Size || s.Arena.Fragmentation != 0 {
		t.Fatalf("after the stress: %+v", s)
	}
}
