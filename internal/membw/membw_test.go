package membw

import (
	"encoding/binary"
	"math"
	"math/rand/v2"
	"strconv"
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
