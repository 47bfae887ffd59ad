package membw

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strconv"
	"sync"
	"testing"
	"time"
)

// reference is Read's value computed byte by byte.
func reference(buf []byte) uint64 {
	var s uint64
	for i := 0; i < len(buf); i += 8 {
		var w [8]byte
		copy(w[:], buf[i:])
		s += binary.LittleEndian.Uint64(w[:])
	}
	return s
}

func TestRead(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	r := rand.New(rand.NewPCG(seed, 1))
	big := make([]byte, 1<<16+77)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	sizes := []int{0, 1, 7, 8, 9, 31, 32, 33, 63, 64, 100, 255, 256, 257, 511, 1000, 4096, 4096 + 31, len(big)}
	for range 20 {
		sizes = append(sizes, r.IntN(len(big)))
	}
	for _, n := range sizes {
		// Unaligned starts too.
		for _, off := range []int{0, 1, 5} {
			if off+n > len(big) {
				continue
			}
			b := big[off : off+n]
			want := reference(b)
			if got := Read(b); got != want {
				t.Errorf("Read(%d bytes at %d) = %#x, want %#x", n, off, got, want)
			}
			if got := sumGo(b[:n&^31]) + sumTail(b[n&^31:]); got != want {
				t.Errorf("Go path (%d bytes at %d) = %#x, want %#x", n, off, got, want)
			}
		}
	}
}

// TestReadBusy checks that the busy loop reads what Read reads (the
// multiples of 256 bytes), in the assembly and the Go versions.
func TestReadBusy(t *testing.T) {
	r := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 2))
	big := make([]byte, 1<<14+300)
	for i := range big {
		big[i] = byte(r.Uint32())
	}
	for _, n := range []int{0, 255, 256, 257, 511, 512, 4096 + 255, len(big)} {
		for _, off := range []int{0, 3} {
			if off+n > len(big) {
				continue
			}
			b := big[off : off+n]
			want := reference(b[:n&^255])
			for _, rounds := range []int{-1, 0, 3} {
				if got := ReadBusy(b, rounds); got != want {
					t.Errorf("ReadBusy(%d bytes at %d, %d rounds) = %#x, want %#x", n, off, rounds, got, want)
				}
				if n >= 256 {
					if got := sumBusyGo(b[:n&^255], max(rounds, 0)); got != want {
						t.Errorf("Go path (%d bytes at %d, %d rounds) = %#x, want %#x", n, off, rounds, got, want)
					}
				}
			}
		}
	}
}

// TestBandwidthOf checks that the read function given is the one run, over
// the whole buffer once per pass.
func TestBandwidthOf(t *testing.T) {
	var mu sync.Mutex
	read := 0
	bw := BandwidthOf(100000, 3, time.Millisecond, func(b []byte) uint64 {
		mu.Lock()
		read += len(b)
		mu.Unlock()
		return 0
	})
	if !(bw > 0) || read == 0 || read%100000 != 0 {
		t.Errorf("BandwidthOf: %v bytes/s after reading %d bytes; want positive, whole passes of 100000", bw, read)
	}
}

// TestPass checks that each Rate reads every byte of the buffer once,
// split among the workers, and that Close stops them (goleak).
func TestPass(t *testing.T) {
	var (
		mu    sync.Mutex
		read  int
		calls int
	)
	const size = 100001
	p := NewPass(size, 3, func(b []byte) uint64 {
		mu.Lock()
		read += len(b)
		calls++
		mu.Unlock()
		return 0
	})
	defer p.Close()
	for pass := 1; pass <= 4; pass++ {
		if r := p.Rate(); !(r > 0) || math.IsInf(r, 0) {
			t.Errorf("pass %d: rate %v, want positive and finite", pass, r)
		}
		if read != pass*size || calls != pass*3 {
			t.Fatalf("after %d passes: %d bytes in %d reads, want %d in %d", pass, read, calls, pass*size, pass*3)
		}
	}
}

func TestBandwidth(t *testing.T) {
	for _, c := range []struct{ size, workers int }{{64 << 10, 1}, {100001, 2}, {10, 4}, {0, 0}} {
		bw := Bandwidth(c.size, c.workers, time.Millisecond)
		if !(bw > 0) || math.IsInf(bw, 0) || math.IsNaN(bw) {
			t.Errorf("Bandwidth(%d, %d) = %v, want positive and finite", c.size, c.workers, bw)
		}
		t.Logf("Bandwidth(%d, %d) = %.2f GB/s", c.size, c.workers, bw/1e9)
	}
}

func BenchmarkRead(b *testing.B) {
	for _, size := range []int{32 << 10, 512 << 10, 64 << 20} {
		buf := make([]byte, size)
		for i := range buf {
			buf[i] = byte(i) // real pages, not the shared zero page
		}
		b.Run(strconv.Itoa(size>>10)+"KiB", func(b *testing.B) {
			b.SetBytes(int64(size))
			for b.Loop() {
				Read(buf)
			}
		})
	}
}
