package storage

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/zeebo/xxh3"
)

// copyHashSeed must equal a copy followed by xxh3.HashSeed for every length
// (across the short forms, block and stripe boundaries, and the partial last
// stripe), seed and alignment, with the fused kernel and without it.
func TestCopyHashSeedMatchesXXH3(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	src := make([]byte, 70000)
	for i := range src {
		src[i] = byte(r.Uint32())
	}
	lengths := []int{0, 1, 16, 17, 128, 129, 240, 241, 255, 256, 257, 1023, 1024, 1025, 1088, 2047, 2048, 2049, 4096 + 63, 32 << 10, 65536 + 17}
	for range 200 {
		lengths = append(lengths, r.IntN(len(src)-8))
	}
	for _, fused := range []bool{true, false} {
		if fused && !useAVX2 {
			continue
		}
		was := useAVX2
		setUseAVX2(fused)
		for _, n := range lengths {
			for _, seed := range []uint64{0, 1, r.Uint64()} {
				off := r.IntN(8) // unaligned source and destination
				in := src[off : off+n]
				dst := make([]byte, n+16)
				got := copyHashSeed(dst[off%3:], in, seed)
				if want := xxh3.HashSeed(in, seed); got != want {
					t.Fatalf("fused %v, %d bytes, seed %x: hash %x, want %x", fused, n, seed, got, want)
				}
				if !bytes.Equal(dst[off%3:off%3+n], in) {
					t.Fatalf("fused %v, %d bytes: copy differs", fused, n)
				}
			}
		}
		setUseAVX2(was)
	}
}

// BenchmarkCopyHash compares the fused copy-and-hash with its baseline, a
// copy then a hash, and with a plain copy, for one 32 KiB chunk of a page.
func BenchmarkCopyHash(b *testing.B) {
	for _, n := range []int{32 << 10, 256 << 10} {
		src := make([]byte, n)
		for i := range src {
			src[i] = byte(i * 7)
		}
		dst := make([]byte, n)
		b.Run(fmt.Sprintf("fused/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				copyHashSeed(dst, src, 7)
			}
		})
		b.Run(fmt.Sprintf("copy+xxh3/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				copy(dst, src)
				xxh3.HashSeed(dst, 7)
			}
		})
		b.Run(fmt.Sprintf("copy/%dKiB", n>>10), func(b *testing.B) {
			b.SetBytes(int64(n))
			for b.Loop() {
				copy(dst, src)
			}
		})
	}
}
