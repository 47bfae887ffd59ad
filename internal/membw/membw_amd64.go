package membw

import "golang.org/x/sys/cpu"

// useAVX2 selects the assembly loops (the busy one also needs FMA); fixed
// at init.
var (
	useAVX2 = cpu.X86.HasAVX2
	useFMA  = useAVX2 && cpu.X86.HasFMA
)

func sumBusy(b []byte, rounds int) uint64 {
	if useFMA {
		return sumBusyAVX2(&b[0], len(b), rounds)
	}
	return sumBusyGo(b, rounds)
}

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

// sumBusyAVX2 returns what sumAVX2 returns for n a multiple of 256, after
// rounds steps of dependent multiply-adds per 256 bytes.
//
//go:noescape
func sumBusyAVX2(p *byte, n, rounds int) uint64
