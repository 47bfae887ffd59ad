package membw

import "golang.org/x/sys/cpu"

// useAVX2 selects the assembly loop; fixed at init.
var useAVX2 = cpu.X86.HasAVX2

func sum32(b []byte) uint64 {
	if useAVX2 {
		return sumAVX2(&b[0], len(b))
	}
	return sumGo(b)
}

// sumAVX2 returns the sum (mod 2^64) of the n/8 little-endian uint64
// words at p; n is a multiple of 32.
//
//go:noescape
func sumAVX2(p *byte, n int) uint64
